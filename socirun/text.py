"""Text from outside socirun made safe to show on a terminal.

Registry error bodies, manifest and config strings, platform names, SOCI's paths and the file names an image
chooses all end up in socirun's output. Printed raw, an ESC or a C1 CSI in them is a terminal escape sequence
(move the cursor, retitle the window, rewrite the screen, hide text), and a bidi override reorders what the
reader sees. Every face calls `terminal_safe` on the text it is about to show (the one place text meets the
terminal); the JSON face needs nothing, as json.dumps escapes every control character and, with its default
ensure_ascii, every non-ASCII one.

Lives at the top of the package (no imports) so the error shell in socirun.commands and the faces in socirun.ui
may both use it.
"""

from __future__ import annotations

# C0 controls, DEL and the C1 controls (U+0080-U+009F: U+009B is a one-character CSI on many terminals).
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
# The bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI): "Trojan Source" text.
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
# Lone surrogates: what os.fsdecode makes of undecodable bytes; a strict stdout cannot encode them at all.
_SURROGATES = range(0xD800, 0xE000)


def _visible(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ONE_LINE: dict[int, str] = {code: _visible(code) for code in (*_CONTROLS, *_BIDI, *_SURROGATES)}
_ONE_LINE |= {ord("\t"): " ", ord("\n"): "\\n", ord("\r"): "\\r"}
_MULTI_LINE: dict[int, str] = {code: text for code, text in _ONE_LINE.items() if code != ord("\n")}


def terminal_safe(text: str, *, multiline: bool = False) -> str:
    """`text` with every control character, DEL, bidi control and lone surrogate written as a visible escape
    (ESC → `\\x1b`, U+202E → `\\u202e`) and a tab as a space; a newline stays only when `multiline`.

    The result holds printable characters only, so applying it again changes nothing."""
    return text.translate(_MULTI_LINE if multiline else _ONE_LINE)
