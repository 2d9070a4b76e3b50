"""BLSP's step internals: what the three scripts (`generate_continuations.py`, `train_adapter.py`,
`evaluate_blsp.py`) wire together. The model, processor and pipeline are the Hub files at the repository's top.

- `corpora`: opening speech corpora (the one format resolver), row ids, the join with step 1's rows
- `utf8`, `rejects`: text files that are not UTF-8; rejected rows and the rejects files
- `arguments`: the scripts' shared flags (`--dtype`) and their .json/.yaml files
- `continuations`: step 1's generation backends (`model.generate` or vLLM), the cached teacher
- `streaming`, `training_data`: step 2's rows, streamed or map-style
- `objectives`, `training`, `augmentation`, `engines`: step 2's objectives table, trainer parts, speech augmentation,
  DDP/FSDP2/DeepSpeed checks
- `identity`: model fingerprints and changed settings at joins and resumes
- `evaluation`: zero-shot evaluation and its scores
- `model_card`: the card step 2 writes
"""
