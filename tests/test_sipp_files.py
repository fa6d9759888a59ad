"""The project's sipp files: the RTP tone is what make_tone.py makes, its A-law
encoder is G.711's, and every scenario is well-formed and described."""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "sipp"
TEST_ONLY = REPO / "tests" / "integration" / "scenarios"


def load_make_tone() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tone", EXAMPLES / "make_tone.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tone = load_make_tone()


def alaw_decode(octet: int) -> int:
    """G.711 A-law octet -> 16-bit linear value at the middle of its step."""
    octet ^= 0x55
    segment, step = (octet >> 4) & 0x07, octet & 0x0F
    value = (step << 4) + 8 if segment == 0 else ((step << 4) + 0x108) << (segment - 1)
    return value if octet & 0x80 else -value


def test_alaw_reference_points() -> None:
    # G.711: silence is 0xD5 (positive zero) / 0x55 (negative), full scale 0xAA / 0x2A.
    assert [make_tone.alaw(s) for s in (0, -1, 32767, -32768)] == [0xD5, 0x55, 0xAA, 0x2A]


def test_alaw_round_trip_error_is_within_one_step() -> None:
    previous = -(1 << 16)
    for sample in range(-32768, 32768, 7):
        decoded = alaw_decode(make_tone.alaw(sample))
        # The step doubles with each segment: 1/32 of the magnitude, 16 at the bottom.
        assert abs(decoded - sample) <= max(16, abs(sample) // 32 + 16), sample
        assert decoded >= previous, f"not monotonic at {sample}"
        previous = decoded


def test_committed_tone_is_the_generators_output() -> None:
    assert (EXAMPLES / "tone_440hz_1s.alaw").read_bytes() == make_tone.tone()


def test_tone_is_one_second_of_440_hz() -> None:
    samples = [alaw_decode(o) for o in make_tone.tone()]
    assert len(samples) == 8000
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    assert abs(crossings - 880) <= 2  # two a cycle
    peak = max(abs(s) for s in samples)
    assert math.isclose(peak, make_tone.AMPLITUDE, rel_tol=0.05)


@pytest.mark.parametrize("folder", [EXAMPLES, TEST_ONLY], ids=["examples", "test-only"])
def test_every_scenario_parses_and_is_in_the_readme(folder: Path) -> None:
    readme = (folder / "README.md").read_text()
    scenarios = sorted(folder.glob("*.xml"))
    assert scenarios
    for path in scenarios:
        ET.parse(path)  # well-formed (sipp refuses a broken file only when run)
        assert f"`{path.name}`" in readme, f"{path.name} is not described in {folder}/README.md"
