"""BLEU-4 (sacrebleu) and ROUGE-L (rouge-score) on chat validation data, Chinese included.

Reference = the last assistant turn of each record; hypothesis = greedy generation of the model
(base + adapter) from the turns before it. sacrebleu's ``zh`` tokenizer is used when the references are
Chinese (``13a`` otherwise); rouge-score's default tokenizer drops every non-ASCII character, so
ROUGE-L gets ``MixedTokenizer``: jieba words for Chinese runs, lower-cased words for the rest.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.finetune.data import ChatRecord, split_prompt_reference
from shared.io import InputError

log = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK_RANGES}]+|[^\W_{_CJK_RANGES}]+")


def is_chinese(texts: Sequence[str], threshold: float = 0.2) -> bool:
    """True if CJK characters make up at least ``threshold`` of the letters across ``texts``."""
    joined = "".join(texts)
    letters = sum(ch.isalpha() for ch in joined) or 1
    return len(_CJK.findall(joined)) / letters >= threshold


class MixedTokenizer:
    """rouge-score tokenizer (``tokenize(text) -> list[str]``) that keeps Chinese: jieba for CJK runs."""

    def tokenize(self, text: str) -> list[str]:
        import jieba

        tokens: list[str] = []
        for piece in _TOKEN.findall(text):
            if _CJK.match(piece):
                tokens.extend(w for w in jieba.lcut(piece) if w.strip())
            else:
                tokens.append(piece.lower())
        return tokens


@dataclass
class Scores:
    bleu4: float
    """Corpus BLEU-4, 0-100 (sacrebleu's scale)."""
    rouge_l: float
    """Mean ROUGE-L F1, 0-1."""
    n: int
    bleu_tokenize: str
    hypotheses: list[str]
    references: list[str]

    def metrics(self) -> dict[str, float]:
        return {"bleu4": self.bleu4, "rougeL": self.rouge_l, "eval_records": float(self.n)}


def score_texts(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    import jieba
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need equal, non-zero numbers of hypotheses and references "
                         f"({len(hypotheses)} vs {len(references)})")
    jieba.setLogLevel(logging.WARNING)
    tokenize = "zh" if is_chinese(references) else "13a"
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize)  # max n-gram 4
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=MixedTokenizer())
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return Scores(float(bleu.score), sum(rouge) / len(rouge), len(references), tokenize,
                  list(hypotheses), list(references))


def generate_answers(model, tokenizer, prompts: Sequence[list[dict]], *, max_new_tokens: int = 64,
                     batch_size: int = 8, progress: bool = False) -> list[str]:
    """Greedy answers for chat prompts (left-padded batches; special tokens stripped)."""
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"
    answers: list[str] = []
    was_training = model.training
    model.eval()
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        answers.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    if was_training:
        model.train()
    return answers


def evaluate_records(model, tokenizer, records: Sequence[ChatRecord], *, max_new_tokens: int = 64,
                     batch_size: int = 8, max_records: int | None = None, progress: bool = False) -> Scores:
    """BLEU-4 / ROUGE-L of the model's greedy answers against each record's last assistant turn."""
    records = list(records)[:max_records] if max_records else list(records)
    pairs = [split_prompt_reference(r) for r in records]
    hypotheses = generate_answers(model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, progress=progress)
    return score_texts(hypotheses, [ref for _, ref in pairs])


def adapter_base_path(adapter_dir: str | Path) -> Path:
    """The base checkpoint an adapter was trained on (``base_model_name_or_path`` in its config)."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.exists():
        raise InputError(f"{config_file}: missing (not a PEFT adapter directory)")
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as exc:
        raise InputError(f"{config_file}: corrupt JSON ({exc})") from None
    if not base:
        raise InputError(f"{config_file}: no base_model_name_or_path; pass --base")
    return Path(base)


def evaluate_adapter(adapter_dir: str | Path | None, data: str | Path, *, base: str | Path | None = None,
                     max_new_tokens: int = 64, batch_size: int = 8, max_records: int | None = None,
                     progress: bool = False) -> Scores:
    """Load base (+ adapter, if given), generate greedily on ``data`` (chat JSONL), score."""
    from core.finetune.data import load_chat_jsonl
    from core.model.loading import load_model

    records = load_chat_jsonl(data)
    base_path = Path(base) if base else adapter_base_path(adapter_dir)
    loaded = load_model(base_path)
    model = loaded.model
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return evaluate_records(model, loaded.tokenizer, records, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, max_records=max_records, progress=progress)
