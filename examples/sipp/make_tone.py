"""Write tone_440hz_1s.alaw: 1 s of a 440 Hz sine, 8 kHz, G.711 A-law, raw octets.

call_uac_rtp.xml streams the file with sipp's rtp_stream (payload type 8,
160 octets = 20 ms a packet). The committed file is this script's output; the
tests check it still is. Standard library only (audioop, which had an A-law
encoder, is gone from Python 3.13).

    python3 examples/sipp/make_tone.py [OUTPUT]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

RATE = 8000          # samples per second (G.711)
FREQUENCY = 440.0    # Hz
AMPLITUDE = 16000    # of 32767: about -6 dBFS, loud and far from clipping
# Upper ends of the seven A-law segments above the first, on the 13-bit scale
# G.711 works in (a 16-bit sample shifted right by 3).
_SEGMENT_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def alaw(sample: int) -> int:
    """One 16-bit signed linear sample as a G.711 A-law octet.

    Sign bit, 3-bit segment (a power of two) and 4-bit step within it; the
    result is XORed with 0x55, as G.711 sends it (even bits inverted), and a
    positive value has the sign bit set.
    """
    value = sample >> 3
    if value >= 0:
        sign = 0x80
    else:
        sign, value = 0x00, -value - 1
    if value <= 0x1F:
        # Segments 0 and 1 have the same step (2 on this scale), so the
        # lowest 32 values map straight onto codes 0-15.
        code = value >> 1
    else:
        segment = next((i for i, end in enumerate(_SEGMENT_ENDS) if value <= end), None)
        if segment is None:
            code = 0x7F  # beyond the last segment: clip to the largest code
        else:
            segment += 1
            code = (segment << 4) | ((value >> segment) & 0x0F)
    return (sign | code) ^ 0x55


def tone(frequency: float = FREQUENCY, seconds: float = 1.0, amplitude: int = AMPLITUDE) -> bytes:
    """A sine of ``frequency`` Hz, ``seconds`` long, as A-law octets at 8 kHz."""
    count = round(RATE * seconds)
    return bytes(
        alaw(round(amplitude * math.sin(2 * math.pi * frequency * i / RATE))) for i in range(count)
    )


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("tone_440hz_1s.alaw")
    out.write_bytes(tone())
    print(f"wrote {out} ({out.stat().st_size} octets)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
