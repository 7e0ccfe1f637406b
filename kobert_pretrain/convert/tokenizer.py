"""The release's fast tokenizer: SentencePiece's ids exactly, BERT's [CLS]/[SEP] template, a usable [MASK].

SentencePiece normalizes in one longest-match pass over its character map, whose multi-character keys are the
decompositions of single characters ('e' + U+0301, NFD '대', 'ㅎㅏ', 'ｶﾞ'). So it composes a decomposed
character, but never two keys into one ('가' + 'ᆨ' and 'ü' + U+0301 stay two characters), never across a
character it deletes (control characters), and never reorders combining marks. tokenizers' `Precompiled`
normalizer, which transformers' SpmConverter uses, applies the map per grapheme instead, and to a grapheme as a
whole only below 6 bytes: it leaves NFD Hangul, compatibility jamo followed by a vowel ('ㅋㅠㅠ') and half-width
voiced kana unknown, and turns 'Ａ' + U+0301 into 'A' (the accent dropped).

`spm_normalizer` rebuilds SentencePiece's result from parts that tokenizer.json can hold:

    1. Precompiled, one character at a time: a SPLIT mark inserted before every character that could join a
       grapheme keeps whole graphemes from reaching the map (removed right after);
    2. NFC composes what SentencePiece's multi-character keys compose;
    3. a BLOCK mark (removed after NFC) stops NFC where SentencePiece does not compose: between a character that
       is not one indivisible character once mapped ('가', 'ü', '㎏', U+0344) and a following one that could
       attach, before combining marks out of canonical order or that NFC would attach past another mark, and in
       place of every character the map deletes;
    4. the letter + mark pairs where case folding (nfkc_cf) makes these rules wrong are asked of SentencePiece
       itself and spelled out (a BLOCK, or SentencePiece's result);
    5. SentencePiece's whitespace rules: trailing spaces dropped, runs collapsed, ' ' -> '▁'.

The character classes are derived from the model's own map, so every normalization rule is covered (nmt_nfkc,
nfkc, their _cf variants; identity has no map). BLOCK and SPLIT are the Unicode noncharacters U+FDD0 and U+FDD1,
removed from the input first: text that contains them differs (SentencePiece keeps them). The classes come from
Python's Unicode data and NFC is tokenizers' own, both older than SentencePiece's (Unicode 16): compositions
newer than them differ (Dives Akuru U+11935 + U+11930; with a _cf rule U+1CCDE + U+0307). Ids can also differ
on a score tie, see `same_or_tied`.

The dummy prefix '▁' is Metaspace's, with prepend_scheme="first" (as AlbertTokenizerFast): only the start of the
text gets it, not text after a special token, and [MASK] absorbs the spaces before it (lstrip). So
'수도는 [MASK]이다.' encodes as training saw a masked '▁서울' ([MASK] '이' '다'), while '[MASK] 이다' keeps the
word start ('▁이'). Leading spaces are not stripped but become that prefix (and so do deleted characters at the
start: Metaspace sees "the start" as a normalized character aligned with offset 0); a literal '▁' at the start
of the text (kept by nfkc and identity) is doubled, as SentencePiece puts its dummy prefix before it.
"""

from __future__ import annotations

import functools
import unicodedata

from kobert_pretrain.errors import UserError
from kobert_pretrain.vocab import CLS, MASK, PAD, SEP, SPECIAL_IDS, UNK, WORD_START, Vocab

BLOCK = "\ufdd0"
SPLIT = "\ufdd1"
# Characters that never join a grapheme with what precedes them: no SPLIT before them (ASCII, CJK ideographs,
# Hangul syllables), which keeps the normalizer's work on ordinary Korean text small.
_PLAIN = r"\x{0}-\x{7F}\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{AC00}-\x{D7A3}"
_HANGUL_V_T = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # jamo that compose with what precedes


def build_tokenizer(vocab: Vocab, max_length: int):
    """A PreTrainedTokenizerFast that encodes text exactly as `vocab`'s spm.model, inside [CLS] ... [SEP]."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    model = (vocab.path / "spm.model").read_bytes()
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model)
    spec = proto.normalizer_spec
    if not (spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces) \
            or proto.trainer_spec.treat_whitespace_as_suffix:
        raise UserError(f"{vocab.path / 'spm.model'}: whitespace options other than SentencePiece's defaults "
                        "have no fast tokenizer here; rebuild the vocabulary with `kobert-pretrain vocab`")
    if proto.trainer_spec.model_type == 2:  # BPE
        pieces = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:
        pieces = [(p.piece, p.score) for p in proto.pieces]
    # legacy=False: Metaspace(prepend_scheme="first"), the dummy prefix only at the start of the text.
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, pieces, legacy=False)
    tokenizer.normalizer = spm_normalizer(model)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, SPECIAL_IDS[CLS]), (SEP, SPECIAL_IDS[SEP])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP,
        mask_token=AddedToken(MASK, lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=max_length, do_lower_case=False,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


# Checked at every conversion (with their NFD and NFKD forms): what SpmConverter's tokenizer got wrong, and the
# whitespace rules. A tokenizers release that changed a normalizer would stop the conversion, not ship.
PROBES = [
    "대한민국의 수도는 서울이다.", "ㅎㅏ", "ㄱㅏ나다", "ㅋㅠㅠ", "웃겨ㅋㅋㅋㅠㅠ", "ｶﾞｷﾞ ﾊﾟ", "Ａ\u0301", "가\u11a8",
    "ü\u0301", "a\u0302\u0323", "ㄱ\x01ㅏ", "\x01가나", "～", "e\u0301", "ｆｕｌｌ　ｗｉｄｔｈ １２３", "①②③ ㈜ ㎏",
    "  여러   칸  ", "\t탭\n줄", "가\u200b나", "\ufeff글", "이모지 😀👍🏻 🇰🇷", "▁", " ▁a", "a▁b", "KoBERT 2024년",
]


def check_tokenizer(tokenizer, sp) -> int:
    """Stop with a UserError unless `tokenizer` encodes PROBES (and their NFD, NFKD) as SentencePiece `sp`."""
    texts = [text for t in PROBES for text in (t, unicodedata.normalize("NFD", t), unicodedata.normalize("NFKD", t))]
    for text in texts:
        want, got = sp.encode(text), tokenizer(text, add_special_tokens=False)["input_ids"]
        if not same_or_tied(sp, tokenizer, text, want, got):
            raise UserError(f"tokenizer check failed: {text!r} encodes as {got} with the Hugging Face tokenizer, "
                            f"{want} with sentencepiece (tokenizers {_version('tokenizers')}); nothing was written")
    return len(texts)


def same_or_tied(sp, tokenizer, text: str, want: list[int], got: list[int]) -> bool:
    """Equal ids, or two segmentations of the same normalized text with exactly equal scores.

    A tie ('......' as '.' '....' '.' or '.' '.' '....'): SentencePiece's Viterbi adds scores in float32,
    tokenizers' in float64, and rounding picks which of the equal paths wins.
    """
    if want == got:
        return True
    from fractions import Fraction

    backend = tokenizer.backend_tokenizer
    normalized = "".join(p for p, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    return sp.normalize(text) == normalized and \
        sum(Fraction(sp.get_score(i)) for i in want) == sum(Fraction(sp.get_score(i)) for i in got)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def spm_normalizer(model: bytes):
    """SentencePiece's normalization of the serialized model `model`, as a tokenizers normalizer."""
    from tokenizers import Regex, normalizers

    charsmap = _model_proto(model).normalizer_spec.precompiled_charsmap
    steps = _map_steps(charsmap, *_corrections(model)) if charsmap else []
    steps += [
        normalizers.Replace(Regex(f"[ {WORD_START}]+\\z"), ""),  # SentencePiece strips a literal '▁' there too
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Replace(Regex(f"\\A{WORD_START}"), WORD_START * 2),  # a literal '▁' after the dummy prefix
        normalizers.Replace(" ", WORD_START),
    ]
    return normalizers.Sequence(steps)


def _map_steps(charsmap: bytes, extra_blocks: dict[int, set[int]], spelled_out: dict[str, list[str]]) -> list:
    """Steps 1-4 of the module docstring: SentencePiece's character map, composing where it composes."""
    from tokenizers import Regex, normalizers

    classes = _classes(charsmap)
    block_at = classes["block_at"] + [f"(?={_char_class([cp])})(?<={_char_class(before)})"
                                      for cp, before in sorted(extra_blocks.items())]
    steps = [normalizers.Replace(Regex(f"[{BLOCK}{SPLIT}]"), "")]
    if spelled_out:
        # The letter becomes the result and a BLOCK, then BLOCK and mark go: replacing both at once would align
        # the result with the mark, and Metaspace would not see text at offset 0 (no dummy prefix).
        steps += [normalizers.Replace(Regex("|".join(f"{_literal(p[0])}(?={_literal(p[1])})" for p in pairs)),
                                      result + BLOCK)
                  for result, pairs in sorted(spelled_out.items())]
        steps.append(normalizers.Replace(Regex(f"{BLOCK}[\\s\\S]"), ""))
    if classes["deleted"]:
        # At the start a space, not nothing: Metaspace gives the dummy prefix only to text at offset 0, and the
        # space becomes that prefix (SentencePiece drops leading spaces and adds it).
        steps.append(normalizers.Replace(Regex(f"\\A{_char_class(classes['deleted'])}+"), " "))
        steps.append(normalizers.Replace(Regex(_char_class(classes["deleted"])), BLOCK))
    steps += [
        # Lookaheads first: most characters attach to nothing, and are passed over at one class test.
        normalizers.Replace(Regex(f"(?={_char_class(classes['attaches'])})(?:{'|'.join(block_at)})"), BLOCK),
        # Not at offset 0: tokenizers mis-aligns an insertion there, and a later step panics.
        normalizers.Replace(Regex(rf"(?<=[\s\S])(?=[^{_PLAIN}])"), SPLIT),
        normalizers.Precompiled(charsmap),
        normalizers.Replace(SPLIT, ""),
        normalizers.NFC(),
        normalizers.Replace(BLOCK, ""),
    ]
    return steps


@functools.lru_cache(maxsize=8)
def _corrections(model: bytes) -> tuple[dict[int, set[int]], dict[str, list[str]]]:
    """Letter + mark pairs on which the rules differ from SentencePiece, and what SentencePiece makes of them.

    Needed for case-folding maps: SentencePiece composes the unfolded pair, then folds ('H' + U+0331 stays
    'h' U+0331 though 'h' + U+0331 composes; 'I' + U+0307 becomes 'İ'). Returns (BLOCKs to add: mark -> the
    letters before it, SentencePiece's result -> the pairs to spell out).
    """
    import sentencepiece as spm
    from tokenizers import normalizers

    proto = _model_proto(model)
    spec = proto.normalizer_spec
    spec.add_dummy_prefix = spec.remove_extra_whitespaces = spec.escape_whitespaces = False
    reference = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    classes = _classes(spec.precompiled_charsmap)
    ours = normalizers.Sequence(_map_steps(spec.precompiled_charsmap, {}, {}))
    spellings = classes["spellings"]
    pairs = sorted({chr(a) + chr(b) for letter, mark in classes["pairs"]
                    for a in spellings[letter] for b in spellings[mark]})
    extra_blocks: dict[int, set[int]] = {}
    spelled_out: dict[str, list[str]] = {}
    # '\n' separates the pairs: a character both sides map alike and that composes with nothing.
    for start in range(0, len(pairs), 4096):
        batch = pairs[start:start + 4096]
        expected, got = reference.normalize("\n".join(batch)), ours.normalize_str("\n".join(batch))
        if expected == got:
            continue
        for pair in batch:
            want = reference.normalize(pair)
            if want == ours.normalize_str(pair):
                continue
            if want == reference.normalize(pair[0]) + reference.normalize(pair[1]):
                extra_blocks.setdefault(ord(pair[1]), set()).add(ord(pair[0]))
            else:
                spelled_out.setdefault(want, []).append(pair)
    return extra_blocks, spelled_out


@functools.lru_cache(maxsize=8)
def _classes(charsmap: bytes) -> dict:
    """The BLOCK rules, from the map applied to every character alone (which Precompiled does as SentencePiece).

    Also the letter + mark compositions ("pairs") and every character that maps (or NFKC-normalizes) to each
    side ("spellings"), for `_corrections`.
    """
    from tokenizers import normalizers

    precompiled = normalizers.Precompiled(charsmap)
    mapped = {}
    for cp in _code_points():
        out = precompiled.normalize_str(chr(cp))
        if out != chr(cp):
            mapped[cp] = out
    # Characters NFC attaches to what precedes: combining marks and the second half of a composition.
    attaching = set(_HANGUL_V_T)
    pairs = set()  # (letter, combining mark) that compose
    for cp in _code_points():
        c = chr(cp)
        if unicodedata.combining(c):
            attaching.add(cp)
        decomposition = unicodedata.decomposition(c)
        if decomposition and not decomposition.startswith("<"):
            parts = [int(x, 16) for x in decomposition.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == c:
                attaching.add(parts[1])
                if unicodedata.combining(chr(parts[1])):
                    pairs.add((parts[0], parts[1]))
    deleted, compound, attaches = set(), set(), set()
    first_ccc, last_ccc = {}, {}
    for cp in _code_points():
        if cp not in mapped and cp not in attaching and not unicodedata.decomposition(chr(cp)) \
                and not 0xAC00 <= cp <= 0xD7A3:
            continue  # maps to itself, indivisible, attaches to nothing: never next to a BLOCK
        out = mapped.get(cp, chr(cp))
        if not out:
            deleted.add(cp)
            continue
        if ord(out[0]) in attaching:
            attaches.add(cp)
        if len(out) > 1 or unicodedata.normalize("NFD", out) != out:
            compound.add(cp)  # SentencePiece's keys never continue from or into it
        if unicodedata.combining(out[0]):
            first_ccc[cp] = unicodedata.combining(out[0])
        if unicodedata.combining(out[-1]):
            last_ccc[cp] = unicodedata.combining(out[-1])
    # Each side of a pair as the map spells it: the characters it maps to that one, and itself if it keeps it.
    sides = {x for pair in pairs for x in pair}
    spellings = {cp: set() if cp in mapped else {cp} for cp in sides}
    for cp, out in mapped.items():
        if len(out) == 1 and ord(out) in sides:
            spellings[ord(out)].add(cp)

    # 1. a compound character next to one that attaches: '가' + 'ᆨ', 'ü' + U+0301, 'U' + U+0344
    block_at = [f"(?={_char_class(attaches)})(?<={_char_class(compound)})"]
    if compound & attaches:
        block_at.append(f"(?={_char_class(compound & attaches)})(?<=[\\s\\S])")
    # 2. marks out of canonical order (NFC would reorder them), and 3. a mark NFC would attach to the letter
    # past a lower-class mark, unless letter + that mark compose (then SentencePiece has the key too: 'a' U+0323 U+0302)
    skipping = []
    for ccc in sorted(set(first_ccc.values())):
        here = _char_class(cp for cp, c in first_ccc.items() if c == ccc)
        after = [cp for cp, c in last_ccc.items() if c > ccc]
        if after:
            block_at.append(f"(?={here})(?<={_char_class(after)})")
        before = [cp for cp, c in last_ccc.items() if c < ccc]
        if before:
            skipping.append(f"(?={here})(?<={_char_class(before)})")
    composing = {}
    for letter, mark in pairs:
        composing.setdefault(mark, set()).update(spellings[letter])
    composing = [f"{_char_class(letters)}{_char_class(spellings[mark])}"
                 for mark, letters in sorted(composing.items()) if letters and spellings[mark]]
    if skipping:
        block_at.append(f"(?:{'|'.join(skipping)})" + (f"(?<!{'|'.join(composing)})" if composing else ""))
    # For `_corrections`: also as NFKC spells it (a case-folding map folds after NFKC: 'I' + U+0307 -> 'İ').
    for cp in mapped:
        nfkc = unicodedata.normalize("NFKC", chr(cp))
        if len(nfkc) == 1 and ord(nfkc) in sides:
            spellings[ord(nfkc)].add(cp)
            spellings[ord(nfkc)].add(ord(nfkc))
    return {"deleted": sorted(deleted), "block_at": block_at, "attaches": sorted(attaches), "pairs": sorted(pairs),
            "spellings": {cp: sorted(spelled) for cp, spelled in spellings.items()}}


def _model_proto(model: bytes):
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model)
    return proto


def _literal(text: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


def _char_class(code_points) -> str:
    """A regex character class of code points, as ranges."""
    cps = sorted(set(code_points))
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" + (f"-\\x{{{cps[j]:X}}}" if j > i else ""))
        i = j + 1
    return "[" + "".join(parts) + "]"


def _code_points():
    # Planes 4-13 hold no characters.
    return (cp for cp in range(1, 0x110000) if not (0xD800 <= cp < 0xE000 or 0x40000 <= cp < 0xE0000))
