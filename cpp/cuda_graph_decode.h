// Batch-1 greedy decode on CUDA by CUDA-graph replay. The decode step (embedding, every layer,
// the LM head, the argmax) is captured once per (model, cache) and replayed per token; position,
// cache length and the fed token live in device memory and the graph advances them itself, so the
// host only reads each token back. The next step is queued before that read, so the GPU does not
// wait for the host. The graph writes into the cache's preallocated storage, which surgery edits in
// place: the ledger stays on the host, and a graph stays valid across drops, truncates and appends.
#pragma once

#include "generate.h"

#include <memory>

namespace prospect {

class SmolVLM;

// The captured graphs a model holds, one per cache it decoded into (a few, newest kept).
struct CudaGraphs;
struct CudaGraphsDeleter {
    void operator()(CudaGraphs* g) const;
};
using CudaGraphsPtr = std::unique_ptr<CudaGraphs, CudaGraphsDeleter>;
CudaGraphsPtr make_cuda_graphs();

// Whether greedy_generate's decode loop can run as graph replays for this cache.
bool cuda_graph_decode_applies(const SmolVLM& model, const KVCache& cache, const GenerateOptions& options);

// greedy_generate's decode loop from `first_token` (already picked from the prefill), same
// semantics: stops, on_token, capacity and max_position_embeddings end it as in the eager loop.
void cuda_graph_decode(const SmolVLM& model, KVCache& cache, int64_t first_token, const GenerateOptions& options,
                       GenerateResult& result);

// Built with CUDA-graph support (a CUDA torch and the CUDA headers), and with the fused kernels (nvcc).
bool has_cuda_graphs();
bool has_cuda_kernels();

}  // namespace prospect
