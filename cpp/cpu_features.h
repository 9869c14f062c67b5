// What the CPU can run, asked once: kernels built for AVX2 + FMA fall back to the baseline ISA.
// (target_clones("arch=haswell") dispatches on the CPU model, so other AVX2 CPUs got the baseline.)
#pragma once

namespace prospect {

inline bool cpu_has_avx2_fma() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace prospect
