"""Discovery from sysfs fixture trees laid out like the kernel's, and the PCI-id table."""

from __future__ import annotations

from legacygpu.testing.sysfs_tree import FakeCard, NodeTree, rx580
from legacygpu.worker.nodeagent.pciids import identify
from legacygpu.worker.nodeagent.sysfs import scan_cards


def test_two_rx580s_are_found_with_their_attributes(node: NodeTree) -> None:
    node.plug(rx580(1, numa_node=1))
    node.plug(rx580(0))
    first, second = scan_cards(node.sysfs)
    assert (first.pci_address, first.render_node, first.card_node) == ("0000:01:00.0", "renderD128", "card0")
    assert (second.pci_address, second.render_node, second.card_node) == ("0000:02:00.0", "renderD129", "card1")
    assert (first.vendor_id, first.device_id, first.revision) == (0x1002, 0x67DF, 0xE7)
    assert first.vram_mib == 8192
    assert first.temperature_c == 40.0 and second.temperature_c == 41.0
    assert first.numa_node is None and second.numa_node == 1  # -1 means "no NUMA information"
    assert first.driver == "amdgpu"
    assert first.pci_path == ("pci0000:00", "0000:00:01.0", "0000:01:00.0")
    assert first.problems == () and second.problems == ()
    model = first.model
    assert (model.family, model.model, model.compute_units, model.gfx) == ("polaris", "rx580", 36, "gfx803")


def test_a_node_without_gpus_or_without_drm_has_no_cards(node: NodeTree) -> None:
    assert scan_cards(node.sysfs) == []
    assert scan_cards(node.root / "no-such-sys") == []


def test_other_vendors_and_non_pci_render_nodes_are_ignored(node: NodeTree) -> None:
    node.plug(FakeCard(pci_address="0000:00:02.0", root_port=None, card_index=0, render_minor=128,
                       vendor=0x8086, device=0x5912, driver="i915"))
    virtual = node.sysfs / "devices/platform/vgem/drm/renderD129"  # vgem: no PCI parent
    virtual.mkdir(parents=True)
    (node.sysfs / "class/drm/renderD129").symlink_to("../../devices/platform/vgem/drm/renderD129")
    node.plug(rx580(2))
    assert [c.pci_address for c in scan_cards(node.sysfs)] == ["0000:03:00.0"]


def test_missing_and_unreadable_files_become_problems_not_exceptions(node: NodeTree) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    vram = node.break_file("0000:01:00.0", "mem_info_vram_total", "unreadable")
    node.break_file("0000:02:00.0", "vendor", "missing")
    node.attribute("0000:02:00.0", "device").write_text("garbage\n")
    a, b = scan_cards(node.sysfs)
    assert a.vram_bytes is None
    assert a.problems == (f"sysfs file {vram} is unreadable: {a.problems[0].rsplit(': ', 1)[1]}",)
    assert b.pci_address == "0000:02:00.0"  # kept: amdgpu drives it even if vendor is unreadable
    assert any("vendor is missing" in p for p in b.problems)
    assert any("holds 'garbage', not a number" in p for p in b.problems)


def test_a_card_without_hwmon_is_reported(node: NodeTree) -> None:
    node.plug(rx580(0))
    import shutil

    shutil.rmtree(node.attribute("0000:01:00.0", "hwmon"))
    (card,) = scan_cards(node.sysfs)
    assert card.temperature_c is None
    assert card.problems and "no temperature sensor" in card.problems[0]


def test_pci_ids_name_polaris_boards_by_revision() -> None:
    assert identify(0x1002, 0x67DF, 0xEF).model == "rx570"
    assert identify(0x1002, 0x67DF, 0xC7).model == "rx480"
    assert identify(0x1002, 0x6FDF, 0xEF).model == "rx580-2048sp"
    unknown_rev = identify(0x1002, 0x67DF, 0x01)
    assert (unknown_rev.family, unknown_rev.model, unknown_rev.compute_units) == ("polaris", "polaris10", None)
    other = identify(0x1002, 0x1234, 0xC8)
    assert (other.family, other.model) == ("unknown", "amd-1234")
    fiji = identify(0x1002, 0x7300, 0xC8)
    assert (fiji.family, fiji.model) == ("fiji", "amd-7300"), "family from the shared table, no board name"
    assert identify(0x10DE, 0x1B80, 0xA1).model == "unknown"


def test_families_agree_with_the_opencl_core_beyond_polaris() -> None:
    """Cards the node agent has no board entry for still get the family the worker reports."""
    from legacygpu.worker.nodeagent.pciids import identify

    assert identify(0x1002, 0x6939, 0xF1).family == "tonga"
    assert identify(0x1002, 0x67DF, 0xE7).family == "polaris"
    assert identify(0x1002, 0x1234, 0x00).family == "unknown"
