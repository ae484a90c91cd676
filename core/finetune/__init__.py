"""LoRA fine-tuning of the DeepSeek core: a YAML-driven recipe (``recipe.run_finetune``), chat data with
assistant-only labels (``data``), a ratio mixer (``mixer``), a back-translation augmenter
(``backtranslate``), PEFT methods registered by name (``methods``) and a SYNTHETIC demo set
(``synthetic``). See docs/finetuning.md."""
