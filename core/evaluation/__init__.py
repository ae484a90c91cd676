"""Evaluation gate: BLEU-4 / ROUGE-L on chat validation data (``metrics``) and the champion/challenger
promotion rule (``gate``: both metrics must improve). See docs/finetuning.md."""
