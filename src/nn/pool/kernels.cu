// The kernels of cnnc's pooling ops on CUDA (src/nn/pool/cuda.rs), compiled at run time
// with NVRTC: no standard headers, so −∞ and NaN tests are spelled out.
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float((int)0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }
template <typename T> __device__ __forceinline__ bool is_nan(T v) { return v != v; }

struct Dim { int input, output, kernel, stride, pad_begin, pad_end; };

__device__ __forceinline__ int win_lo(const Dim d, int o) { int s = o * d.stride - d.pad_begin; return s < 0 ? 0 : (s > d.input ? d.input : s); }
__device__ __forceinline__ int win_hi(const Dim d, int o) {
    int s = o * d.stride - d.pad_begin + d.kernel;
    int hi = s < 0 ? 0 : (s > d.input ? d.input : s);
    int lo = win_lo(d, o);
    return hi < lo ? lo : hi;
}
__device__ __forceinline__ int padded_len(const Dim d, int o) {
    int s = o * d.stride - d.pad_begin;
    int e = s + d.kernel, lim = d.input + d.pad_end - d.pad_begin;
    if (e > lim) e = lim;
    return e - s > 0 ? e - s : 0;
}
// What an average divides by: PoolSpec::divisor.
__device__ __forceinline__ int divisor(const Dim h, const Dim w, int include_pad, int oy, int ox) {
    if (include_pad) return padded_len(h, oy) * padded_len(w, ox);
    return (win_hi(h, oy) - win_lo(h, oy)) * (win_hi(w, ox) - win_lo(w, ox));
}
// The outputs whose windows hold input position i: [first, last], maybe empty.
__device__ __forceinline__ int first_out(const Dim d, int i) {
    int t = i + d.pad_begin - d.kernel + 1;
    int o = t <= 0 ? 0 : (t + d.stride - 1) / d.stride;
    return o;
}
__device__ __forceinline__ int last_out(const Dim d, int i) {
    int o = (i + d.pad_begin) / d.stride;
    return o < d.output - 1 ? o : d.output - 1;
}

// Forward: out[p, oy, ox] = max or mean of the window. mode 0: max, 1: average.
template <typename T>
__device__ void fwd(const T* x, T* out, long long n, Dim h, Dim w, int mode, int include_pad) {
    const long long per = (long long)h.output * w.output;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
        long long p = k / per;
        int r = (int)(k - p * per), oy = r / w.output, ox = r - oy * w.output;
        const T* plane = x + p * h.input * w.input;
        int y0 = win_lo(h, oy), y1 = win_hi(h, oy), x0 = win_lo(w, ox), x1 = win_hi(w, ox);
        T acc;
        if (mode == 0) {
            acc = neg_inf<T>();
            for (int y = y0; y < y1; y++)
                for (int xx = x0; xx < x1; xx++) {
                    T v = plane[y * w.input + xx];
                    if (v > acc || is_nan(v)) acc = v;
                }
        } else {
            acc = 0;
            for (int y = y0; y < y1; y++)
                for (int xx = x0; xx < x1; xx++) acc = acc + plane[y * w.input + xx];
            acc = acc / (T)divisor(h, w, include_pad, oy, ox);
        }
        out[k] = acc;
    }
}

// Max-pool backward, step 1: the index in its plane of each output's first maximum
// (row-major; a NaN beats any number, the first NaN wins), as the CPU's backward finds it.
template <typename T>
__device__ void argmax(const T* x, int* arg, long long n, Dim h, Dim w) {
    const long long per = (long long)h.output * w.output;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
        long long p = k / per;
        int r = (int)(k - p * per), oy = r / w.output, ox = r - oy * w.output;
        const T* plane = x + p * h.input * w.input;
        int y0 = win_lo(h, oy), y1 = win_hi(h, oy), x0 = win_lo(w, ox), x1 = win_hi(w, ox);
        int best = -1;
        T m = neg_inf<T>();
        for (int y = y0; y < y1; y++)
            for (int xx = x0; xx < x1; xx++) {
                T v = plane[y * w.input + xx];
                if (best < 0 || v > m || (is_nan(v) && !is_nan(m))) { m = v; best = y * w.input + xx; }
            }
        arg[k] = best;
    }
}

// Backward, step 2 (and the whole of an average's): dx[p, y, x] adds, in output order, the
// gradient of each output whose window holds (y, x): all of it to a max pool's argmax,
// grad / divisor to each element of an average's window.
template <typename T>
__device__ void bwd(const T* g, const int* arg, T* dx, long long n, Dim h, Dim w, int mode, int include_pad) {
    const long long per = (long long)h.input * w.input;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
        long long p = k / per;
        int i = (int)(k - p * per), y = i / w.input, xx = i - y * w.input;
        const long long base = p * h.output * w.output;
        T acc = 0;
        int oy1 = last_out(h, y), ox0 = first_out(w, xx), ox1 = last_out(w, xx);
        for (int oy = first_out(h, y); oy <= oy1; oy++) {
            if (y < win_lo(h, oy) || y >= win_hi(h, oy)) continue;
            for (int ox = ox0; ox <= ox1; ox++) {
                if (xx < win_lo(w, ox) || xx >= win_hi(w, ox)) continue;
                long long o = base + (long long)oy * w.output + ox;
                if (mode == 0) {
                    if (arg[o] == i) acc = acc + g[o];
                } else {
                    acc = acc + g[o] / (T)divisor(h, w, include_pad, oy, ox);
                }
            }
        }
        dx[k] = acc;
    }
}

extern "C" __global__ void pool_fwd_f32(const float* x, float* out, long long n, Dim h, Dim w, int mode, int include_pad) { fwd<float>(x, out, n, h, w, mode, include_pad); }
extern "C" __global__ void pool_fwd_f64(const double* x, double* out, long long n, Dim h, Dim w, int mode, int include_pad) { fwd<double>(x, out, n, h, w, mode, include_pad); }
extern "C" __global__ void pool_argmax_f32(const float* x, int* arg, long long n, Dim h, Dim w) { argmax<float>(x, arg, n, h, w); }
extern "C" __global__ void pool_argmax_f64(const double* x, int* arg, long long n, Dim h, Dim w) { argmax<double>(x, arg, n, h, w); }
extern "C" __global__ void pool_bwd_f32(const float* g, const int* arg, float* dx, long long n, Dim h, Dim w, int mode, int include_pad) { bwd<float>(g, arg, dx, n, h, w, mode, include_pad); }
extern "C" __global__ void pool_bwd_f64(const double* g, const int* arg, double* dx, long long n, Dim h, Dim w, int mode, int include_pad) { bwd<double>(g, arg, dx, n, h, w, mode, include_pad); }
