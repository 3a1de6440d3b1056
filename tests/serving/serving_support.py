"""Helpers shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

from legacygpu.core.modelcards import CARD_FILE, DynamicBatchingSpec, load_card, save_card

__all__ = ["EXAMPLES", "enable_batching"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "digits"


def enable_batching(models: Path, name: str = "digits", *, max_batch_size: int = 64, delay_us: int = 20_000,
                    **spec: object) -> None:
    """Turn on dynamic batching in a card of the repository at ``models``."""
    path = models / name / CARD_FILE
    card = load_card(path)
    card.max_batch_size = max_batch_size
    card.dynamic_batching = DynamicBatchingSpec.model_validate({"max_queue_delay_microseconds": delay_us, **spec})
    save_card(card, path)
