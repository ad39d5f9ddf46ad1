"""Speculative decoding on a real pretrained model (SmolLM2-135M-Instruct from a GGUF file).

Modules: gguf_load (GGUF -> arrays), model (plain-torch Llama, tree KV cache), attention
(tree attention, swappable), recycling (Token Recycling), rsd (recursive speculative decoding),
draft (layer-skip self-draft + OSD adapter), engine (decode loops), traces (acceptance traces).
"""
