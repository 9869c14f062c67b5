"""Checkpoints made once per test session, and the transformers reference loaded on them."""

import torch

# Two shapes, as the parity tests ask: GQA with head_dim 16, scale 2, 64 px images (the tiny preset);
# and full multi-head attention with head_dim 32, scale 3, 96 px images.
CONFIGS = {
    "tiny": {},
    "mha_scale3": {
        "text_config.hidden_size": 96,
        "text_config.num_attention_heads": 3,
        "text_config.num_key_value_heads": 3,
        "text_config.head_dim": 32,
        "text_config.intermediate_size": 160,
        "vision_config.image_size": 96,
        "vision_config.patch_size": 16,
        "vision_config.hidden_size": 48,
        "vision_config.num_attention_heads": 3,
        "scale_factor": 3,
    },
}


def frame_ids(model, n_images=1, text=(60, 61, 62)):
    """Token ids of SmolVLM2 video frames: text, then <fake><global-img><image>*L<fake> per image."""
    cfg = model.config
    img, L = cfg["image_token_id"], cfg["image_seq_len"]
    fake, glob = img - 2, img - 1  # ids the made tokenizer gives <fake_token_around_image>, <global-img>
    ids = list(text)
    for _ in range(n_images):
        ids += [fake, glob] + [img] * L + [fake]
    return torch.tensor([ids])


def pixels(model, n, seed=0, dtype=torch.float32):
    S = model.config["vision_config"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, n, 3, S, S, generator=g) * 2 - 1).to(dtype)


def tiny_llama(rope_theta, max_positions=512):
    """A 2-layer grouped-query Llama from transformers with random weights, for the cache-interop tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=rope_theta,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(cfg).eval()


def joint_embed_case(dtype, image_token):
    """input_ids [2, 30] holding three 4-token images (one in sample 0, two in sample 1), text embeddings
    [2, 30, 16] and image features [3, 4, 16] in dtype."""
    ids = torch.randint(10, 50, (2, 30))
    ids[0, 3:7] = image_token
    ids[1, 0:4] = image_token
    ids[1, 20:24] = image_token
    return ids, torch.randn(2, 30, 16).to(dtype), torch.randn(3, 4, 16).to(dtype)


def reference_greedy(ref, ids, n):
    """transformers' greedy continuation of ids [1, T]: the n new tokens, and each step's scores."""
    out = ref.generate(
        input_ids=ids,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, ids.shape[1] :].tolist(), out.scores
