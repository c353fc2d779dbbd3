// sample_kernel.cuh — the device sampler's kernel and its helpers (contract: sample.h), kept
// apart from the launch so that it has no dependency but the CUDA built-ins it uses
// (threadIdx, blockDim, blockIdx, __syncthreads, __shfl_down_sync, __shfl_up_sync, atomicAdd,
// __float_as_uint) and eng_sample_row: tests/engine/sample_kernel_emu.cpp runs this very code on
// the CPU, with threads and barriers standing in for a block. Included once, by sample.cu,
// inside its anonymous namespace.
#ifndef RAGKV_ENGINE_CUDA_SAMPLE_KERNEL_CUH
#define RAGKV_ENGINE_CUDA_SAMPLE_KERNEL_CUH

constexpr int BINS = 256; // radix digit: 8 bits of the 64-bit key per pass
constexpr float FIX_ONE = 4503599627370496.0f; // 2^52: probabilities as 2^-52 fixed point
constexpr unsigned FULL = 0xffffffffu;

// eng_sample's probability of a logit v: expf(x - maxv) / sum with x = v / T, NaN weighing 0.
// The same float operations as the host; expf may differ from the host's libm by an ulp or two.
__device__ __forceinline__ float prob_of(float v, float T, float maxv, float sum)
{
    float x = isnan(v) ? -INFINITY : v / T;
    return expf(x - maxv) / sum;
}

__device__ __forceinline__ unsigned long long fix_of(float p) { return (unsigned long long)(p * FIX_ONE); }

// Rank key: larger p first, then lower id (eng_sample's `better`, a total order): the bits of a
// float >= 0 order like the float, and ~id puts lower ids higher. Unique per id.
__device__ __forceinline__ unsigned long long key_of(float p, int i)
{
    return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned long long)(0xffffffffu - (unsigned)i);
}

// (v, i) better than (w, j) as eng_argmax sees it: i < 0 is "none" (worst); larger value, then
// lower id.
__device__ __forceinline__ bool arg_better(float v, int i, float w, int j)
{
    if (i < 0)
        return false;
    if (j < 0)
        return true;
    return v > w || (v == w && i < j);
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ---------------------------
// Each returns the block's result to every thread and may be called again right away.

__device__ int block_argmax(float v, int i)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ int res;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_down_sync(FULL, v, o);
        int oi = __shfl_down_sync(FULL, i, o);
        if (arg_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    if (lane == 0) {
        sv[w] = v;
        si[w] = i;
    }
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sv[lane] : 0.0f;
        i = lane < nw ? si[lane] : -1;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_down_sync(FULL, v, o);
            int oi = __shfl_down_sync(FULL, i, o);
            if (arg_better(ov, oi, v, i)) {
                v = ov;
                i = oi;
            }
        }
        if (lane == 0)
            res = i;
    }
    __syncthreads();
    int r = res;
    __syncthreads();
    return r;
}

// Sum in a fixed tree order (the same result every run); T float or unsigned.
template <typename T>
__device__ T block_sum(T v)
{
    __shared__ T part[32];
    __shared__ T res;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(FULL, v, o);
    if (lane == 0)
        part[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? part[lane] : T(0);
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(FULL, v, o);
        if (lane == 0)
            res = v;
    }
    __syncthreads();
    T r = res;
    __syncthreads();
    return r;
}

// Exclusive prefix sum over the threads in thread order; *total: the sum of all.
__device__ unsigned long long block_excl_scan(unsigned long long v, unsigned long long *total)
{
    __shared__ unsigned long long wsum[32];
    __shared__ unsigned long long tot;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    unsigned long long inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long t = __shfl_up_sync(FULL, inc, o);
        if (lane >= o)
            inc += t;
    }
    if (lane == 31)
        wsum[w] = inc;
    __syncthreads();
    if (w == 0) {
        unsigned long long s = lane < nw ? wsum[lane] : 0ull;
        for (int o = 1; o < 32; o <<= 1) {
            unsigned long long t = __shfl_up_sync(FULL, s, o);
            if (lane >= o)
                s += t;
        }
        if (lane < nw)
            wsum[lane] = s; // inclusive over warps
        if (lane == 31)
            tot = s;
    }
    __syncthreads();
    unsigned long long ex = inc - v + (w > 0 ? wsum[w - 1] : 0ull);
    *total = tot;
    __syncthreads();
    return ex;
}

// ---- radix walk --------------------------------------------------------------------------------
// Walk the ids of the domain (p >= cutoff and key >= minkey) in rank order (descending key),
// accumulating count and fixed-point mass, and find the first id at which stop(count, mass),
// both including that id, holds. Digit by digit from the top: a histogram (count, mass) of the
// domain's ids whose key matches the digits found so far, the first bin that makes stop true
// holds the id; it ends when that bin holds one id, or at the last digit. The integer sums make
// the walk independent of the order the atomics land in. If stop never holds, the walk takes
// the last id (eng_sample's rounding fall-backs do the same); ok false for an empty domain.
struct walk_res {
    unsigned long long key;    // the id's key
    unsigned long long above_c; // count of the domain ranked before it
    unsigned long long above_m; // their mass
    unsigned long long f;       // its own mass
    bool ok;
};

template <typename Stop>
__device__ walk_res radix_walk(const float *pr, int V, float cutoff, unsigned long long minkey, Stop stop)
{
    __shared__ unsigned h_cnt[BINS];
    __shared__ unsigned long long h_mass[BINS];
    __shared__ int s_pick;
    __shared__ unsigned s_cnt;
    __shared__ unsigned long long s_above_c, s_above_m, s_key, s_f;
    const int tid = threadIdx.x, nt = blockDim.x;
    unsigned long long prefix = 0, above_c = 0, above_m = 0;
    int shift = 56;
    for (;; shift -= 8) {
        for (int b = tid; b < BINS; b += nt) {
            h_cnt[b] = 0;
            h_mass[b] = 0;
        }
        __syncthreads();
        for (int i = tid; i < V; i += nt) {
            float p = pr[i];
            unsigned long long k = key_of(p, i);
            if (!(p >= cutoff) || k < minkey)
                continue;
            if (shift < 56 && (k >> (shift + 8)) != (prefix >> (shift + 8)))
                continue;
            int b = (int)((k >> shift) & (BINS - 1));
            atomicAdd(&h_cnt[b], 1u);
            atomicAdd(&h_mass[b], fix_of(p));
        }
        __syncthreads();
        if (tid == 0) {
            unsigned long long cc = above_c, cm = above_m;
            int pick = -1;
            bool stopped = false;
            for (int b = BINS - 1; b >= 0; b--) {
                if (!h_cnt[b])
                    continue;
                pick = b;
                if (stop(cc + h_cnt[b], cm + h_mass[b])) {
                    stopped = true;
                    break;
                }
                cc += h_cnt[b];
                cm += h_mass[b];
            }
            if (!stopped && pick >= 0) { // the last non-empty bin, counted above itself
                cc -= h_cnt[pick];
                cm -= h_mass[pick];
            }
            s_pick = pick;
            s_cnt = pick >= 0 ? h_cnt[pick] : 0u;
            s_above_c = cc;
            s_above_m = cm;
        }
        __syncthreads();
        // every thread reads the shared results before thread 0 writes them again: two
        // barriers (after the zeroing and after the histogram) lie in between
        int pick = s_pick;
        if (pick < 0) {
            walk_res r = {0, 0, 0, 0, false};
            return r; // block-uniform
        }
        above_c = s_above_c;
        above_m = s_above_m;
        prefix |= (unsigned long long)pick << shift;
        if (s_cnt == 1u || shift == 0)
            break; // block-uniform
    }
    // the one domain id whose key has the digits found (from bit `shift` up)
    for (int i = tid; i < V; i += nt) {
        float p = pr[i];
        unsigned long long k = key_of(p, i);
        if (!(p >= cutoff) || k < minkey)
            continue;
        if ((k >> shift) == (prefix >> shift)) {
            s_key = k;
            s_f = fix_of(p);
        }
    }
    __syncthreads();
    walk_res r = {s_key, above_c, above_m, s_f, true};
    __syncthreads();
    return r;
}

// One block per row: see sample.h for what a row gets. A stochastic row's logits are replaced by
// its probabilities, each computed once, which every later pass reads.
__global__ void __launch_bounds__(SAMPLE_THREADS)
    k_sample(float *logits, int V, const eng_sample_row *rows, int32_t *out)
{
    const int row = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    float *l = logits + (size_t)row * (size_t)V;
    const eng_sample_row sr = rows[row];
    // argmax: within a thread ids ascend, so the strict > keeps the lowest id of equal values
    float bv = 0.0f;
    int bi = -1;
    for (int i = tid; i < V; i += nt) {
        float v = l[i];
        if (!isnan(v) && (bi < 0 || v > bv)) {
            bv = v;
            bi = i;
        }
    }
    const int top = block_argmax(bv, bi);
    if (top < 0 || !(sr.temperature > 0.0f)) {
        if (tid == 0)
            out[row] = top;
        return;
    }
    const float T = sr.temperature, maxv = l[top] / T;
    if (!isfinite(maxv)) { // +-inf at the top: the host's softmax is NaN; take the argmax
        if (tid == 0)
            out[row] = top;
        return;
    }
    float s = 0.0f;
    for (int i = tid; i < V; i += nt)
        s += prob_of(l[i], T, maxv, 1.0f);
    const float sum = block_sum<float>(s); // >= 1: the top's term is 1; every l[top] read is done
    // the probabilities in place of the logits: each thread rewrites the ids it read
    for (int i = tid; i < V; i += nt)
        l[i] = prob_of(l[i], T, maxv, sum);
    __syncthreads();
    const float *pr = l;
    if (sr.top_k <= 0 && !(sr.top_p < 1.0f)) {
        // plain sampling in id order: the id whose cumulative mass passes r * total. Each thread
        // owns a contiguous run of ids; a scan of the runs' masses finds the one run that holds
        // the crossing, and its thread walks it.
        int seg = (V + nt - 1) / nt;
        int lo = min(V, tid * seg), hi = min(V, lo + seg);
        unsigned long long mine = 0, total = 0;
        for (int i = lo; i < hi; i++)
            mine += fix_of(pr[i]);
        unsigned long long before = block_excl_scan(mine, &total);
        unsigned long long target = (unsigned long long)((double)sr.r * (double)total);
        if (target >= total) // r < 1 keeps it below; guard against a bad r
            target = total - 1;
        if (before <= target && target < before + mine) { // exactly one thread
            unsigned long long cum = before;
            for (int i = lo; i < hi; i++) {
                cum += fix_of(pr[i]);
                if (cum > target) {
                    out[row] = i;
                    break;
                }
            }
        }
        return;
    }
    // candidates: p >= cutoff (llama2.c's nucleus cut-off), all when none is
    float cutoff = sr.top_p < 1.0f && V > 1 ? (1.0f - sr.top_p) / (float)(V - 1) : 0.0f;
    unsigned m = (unsigned)V;
    if (cutoff > 0.0f) {
        unsigned cnt = 0;
        for (int i = tid; i < V; i += nt)
            cnt += pr[i] >= cutoff;
        m = block_sum<unsigned>(cnt);
        if (m == 0) {
            cutoff = 0.0f;
            m = (unsigned)V;
        }
    }
    const unsigned long long K = sr.top_k > 0 && (unsigned)sr.top_k < m ? (unsigned)sr.top_k : m;
    const unsigned long long tp =
        sr.top_p < 1.0f ? (unsigned long long)((double)sr.top_p * 4503599627370496.0) : ~0ull;
    // the last kept candidate: the first at which the count reaches top_k or the mass top_p
    walk_res keep = radix_walk(pr, V, cutoff, 0ull, [=](unsigned long long cc, unsigned long long cm) {
        return cc >= K || cm >= tp;
    });
    if (!keep.ok) { // cannot happen (the top is a candidate); keep the contract anyway
        if (tid == 0)
            out[row] = top;
        return;
    }
    const unsigned long long mass = keep.above_m + keep.f; // > 0: the top's share is >= 2^52 / V
    unsigned long long target = (unsigned long long)((double)sr.r * (double)mass);
    if (target >= mass)
        target = mass - 1;
    // the kept candidate at which the cumulative mass passes r * mass
    walk_res pick = radix_walk(pr, V, cutoff, keep.key, [=](unsigned long long cc, unsigned long long cm) {
        (void)cc;
        return cm > target;
    });
    if (tid == 0)
        out[row] = pick.ok ? (int32_t)(0xffffffffu - (unsigned)(pick.key & 0xffffffffull)) : top;
}

#endif
