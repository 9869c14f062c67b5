#include "joint_embed.h"

namespace prospect {

at::Tensor joint_embed(const at::Tensor& input_ids, const at::Tensor& text_embeds, const at::Tensor& image_features,
                       int64_t image_token_id) {
    TORCH_CHECK_VALUE(input_ids.dim() == 2, "joint_embed: input_ids expected [B, T], got shape ", input_ids.sizes());
    TORCH_CHECK_TYPE(!at::isFloatingType(input_ids.scalar_type()) && input_ids.scalar_type() != at::kBool,
                     "joint_embed: input_ids expected an integer dtype, got ", input_ids.scalar_type());
    TORCH_CHECK_VALUE(
        text_embeds.dim() == 3 && text_embeds.size(0) == input_ids.size(0) && text_embeds.size(1) == input_ids.size(1),
        "joint_embed: text_embeds expected [", input_ids.size(0), ", ", input_ids.size(1),
        ", H] to match input_ids, got shape ", text_embeds.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(text_embeds.scalar_type()),
                     "joint_embed: text_embeds expected a floating dtype, got ", text_embeds.scalar_type());
    const auto H = text_embeds.size(2);
    TORCH_CHECK_VALUE(image_features.dim() == 3 && image_features.size(2) == H,
                      "joint_embed: image_features expected [N, L, ", H, "], got shape ", image_features.sizes());
    TORCH_CHECK_TYPE(image_features.scalar_type() == text_embeds.scalar_type(),
                     "joint_embed: image_features expected dtype ", text_embeds.scalar_type(),
                     " (as text_embeds), got ", image_features.scalar_type());
    TORCH_CHECK_VALUE(input_ids.device() == text_embeds.device() && image_features.device() == text_embeds.device(),
                      "joint_embed: tensors expected on one device, got input_ids on ", input_ids.device(),
                      ", text_embeds on ", text_embeds.device(), ", image_features on ", image_features.device());

    const auto mask = input_ids.eq(image_token_id);  // [B, T]
    const int64_t n_tokens = mask.sum().item<int64_t>();
    const int64_t n_rows = image_features.size(0) * image_features.size(1);
    TORCH_CHECK_VALUE(n_tokens == n_rows, "joint_embed: input_ids hold ", n_tokens, " image tokens (id ",
                      image_token_id, ") but image_features hold ", n_rows, " rows (", image_features.size(0),
                      " images x ", image_features.size(1), " tokens)");
    if (n_rows == 0) return text_embeds.clone();
    return text_embeds.masked_scatter(mask.unsqueeze(-1), image_features.reshape({n_rows, H}));
}

}  // namespace prospect
