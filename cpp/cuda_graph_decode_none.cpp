// cuda_graph_decode.h for builds without CUDA: greedy_generate always takes the eager loop.
#include "cuda_graph_decode.h"

#include <c10/util/Exception.h>

namespace prospect {

struct CudaGraphs {};
void CudaGraphsDeleter::operator()(CudaGraphs* g) const { delete g; }
CudaGraphsPtr make_cuda_graphs() { return CudaGraphsPtr(new CudaGraphs); }

bool cuda_graph_decode_applies(const SmolVLM&, const KVCache&, const GenerateOptions&) { return false; }

void cuda_graph_decode(const SmolVLM&, KVCache&, int64_t, const GenerateOptions&, GenerateResult&) {
    TORCH_CHECK(false, "cuda_graph_decode: this build of prospect has no CUDA-graph support");
}

bool has_cuda_graphs() { return false; }
bool has_cuda_kernels() { return false; }

}  // namespace prospect
