// HASSOD_MULTIVERSION: compile a hot function for AVX-512 (x86-64-v4), AVX2 + FMA (haswell) and
// the baseline, picked at load time (GCC on x86-64 Linux; a plain function elsewhere).
#pragma once

#ifndef HASSOD_MULTIVERSION
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define HASSOD_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#else
#define HASSOD_MULTIVERSION
#endif
#endif
