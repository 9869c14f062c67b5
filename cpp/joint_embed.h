// Merging image features into the text embeddings, as SmolVLM2 does.
#pragma once

#include <ATen/core/Tensor.h>

namespace prospect {

// input_ids [B, T], text_embeds [B, T, H], image_features [N, L, H] -> [B, T, H].
// The k-th image token (row-major over the batch) takes row k of the flattened
// features [N * L, H]; the number of image tokens must equal N * L.
at::Tensor joint_embed(const at::Tensor& input_ids, const at::Tensor& text_embeds, const at::Tensor& image_features,
                       int64_t image_token_id);

}  // namespace prospect
