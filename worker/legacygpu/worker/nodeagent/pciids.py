"""What a PCI id says about a legacy AMD card: family, model and compute units.

Design: the kernel tells us the PCI vendor, device and revision ids of each
card (``vendor``, ``device``, ``revision`` in its sysfs directory). AMD reuses
one device id for several boards (0x67df is the RX 470, 480, 570, 580 and 590)
and tells them apart by the revision, the way libdrm's ``amdgpu.ids`` table
does. This module holds the small part of that mapping the project targets
(Polaris, gfx803), with the compute-unit count from AMD's published board
specifications. A card missing from the table is still advertised: its family
falls back to the device id's family or ``unknown``, and its model to
``amd-<device id>``. The OpenCL driver's own ``max_compute_units``, when it
answers, overrides the table (see :mod:`.labeller`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AMD_VENDOR_ID", "CardModel", "identify"]

AMD_VENDOR_ID = 0x1002


@dataclass(frozen=True)
class CardModel:
    """Label-ready names for one card (lower case, no spaces)."""

    family: str
    model: str
    compute_units: int | None
    gfx: str | None


# device id -> (family, gfx target, fallback model)
_DEVICE_FAMILIES: dict[int, tuple[str, str | None, str]] = {
    0x67DF: ("polaris", "gfx803", "polaris10"),  # Ellesmere: RX 470/480/570/580/590
    0x6FDF: ("polaris", "gfx803", "polaris20"),  # RX 580 2048SP, RX 590 GME
    0x67C0: ("polaris", "gfx803", "polaris10"),  # Radeon Pro WX 7100 (mobile/embedded)
    0x67C4: ("polaris", "gfx803", "polaris10"),  # Radeon Pro WX 7100
    0x67C7: ("polaris", "gfx803", "polaris10"),  # Radeon Pro WX 5100
    0x67EF: ("polaris", "gfx803", "polaris11"),  # Baffin: RX 460 and relatives
    0x67FF: ("polaris", "gfx803", "polaris11"),  # RX 550/560 variants
    0x699F: ("polaris", "gfx803", "polaris12"),  # Lexa: RX 540/550
}

# (device id, revision) -> (model, compute units)
_BOARDS: dict[tuple[int, int], tuple[str, int | None]] = {
    (0x67DF, 0xC1): ("rx580", 36),
    (0x67DF, 0xC3): ("rx580", 36),
    (0x67DF, 0xE7): ("rx580", 36),
    (0x67DF, 0xC2): ("rx570", 32),
    (0x67DF, 0xC6): ("rx570", 32),
    (0x67DF, 0xEF): ("rx570", 32),
    (0x67DF, 0xC4): ("rx480", 36),
    (0x67DF, 0xC7): ("rx480", 36),
    (0x67DF, 0xC5): ("rx470", 32),
    (0x67DF, 0xCF): ("rx470", 32),
    (0x67DF, 0xD7): ("rx470", 32),
    (0x67DF, 0xE0): ("rx470", 32),
    (0x67DF, 0xFF): ("rx470", 32),
    (0x67DF, 0xE1): ("rx590", 36),
    (0x67DF, 0xC0): ("pro-580x", 36),
    (0x67DF, 0xEB): ("pro-580x", 36),
    (0x6FDF, 0xEF): ("rx580-2048sp", 32),
    (0x6FDF, 0xE7): ("rx590-gme", 36),
    (0x67C4, 0x00): ("pro-wx7100", 36),
    (0x67C7, 0x00): ("pro-wx5100", 28),
    (0x67EF, 0xC1): ("rx460", 14),
    (0x67EF, 0xC5): ("rx460", 14),
    (0x67EF, 0xCF): ("rx460", 14),
    (0x67FF, 0xC1): ("rx560", None),  # shipped with 14 or 16 CUs under one id
    (0x67FF, 0xCF): ("rx560", None),
    (0x67FF, 0xEF): ("rx560", None),
    (0x67FF, 0xFF): ("rx550", 8),
    (0x699F, 0xC7): ("rx550", 8),
}


def identify(vendor_id: int | None, device_id: int | None, revision: int | None) -> CardModel:
    """Name a card from its PCI ids; never fails, unknown parts say ``unknown``."""
    if vendor_id != AMD_VENDOR_ID or device_id is None:
        return CardModel(family="unknown", model="unknown", compute_units=None, gfx=None)
    family, gfx, fallback = _DEVICE_FAMILIES.get(device_id, (_family_by_id(device_id), None, f"amd-{device_id:04x}"))
    board = _BOARDS.get((device_id, revision)) if revision is not None else None
    if board is None:
        return CardModel(family=family, model=fallback, compute_units=None, gfx=gfx)
    model, compute_units = board
    return CardModel(family=family, model=model, compute_units=compute_units, gfx=gfx)


def _family_by_id(device_id: int) -> str:
    """The family the OpenCL core's PCI table gives (Polaris ranges, Fiji, Tonga), or ``unknown``.

    One table of families for the whole worker: the node agent's labels and the
    worker's own device report agree even for ids this module has no board for.
    """
    from legacygpu.worker.opencl.device import identify_legacy_family

    return identify_legacy_family("", pci_id=f"{AMD_VENDOR_ID:04x}:{device_id:04x}") or "unknown"
