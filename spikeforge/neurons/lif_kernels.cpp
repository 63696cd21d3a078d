// The binary LIF scan of spikeforge.neurons for a CPU. BPTT's forward and backward are each
// one loop over blocks of neurons with the time loop inside (every input read once, every
// output written once); the scan without gradient (a converted network's neurons) is one
// fused pass per step. The eager scan makes several passes over memory per step. The
// arithmetic is the eager scan's, operation for operation (built with -ffp-contract=off, so
// no multiply-add is fused): the forwards give the same spikes, membranes and final state bit
// for bit, the backward the same gradients to float rounding (ATen's addcmul may fuse a
// multiply-add).
//
// Tensors are (T, N) and contiguous: one step of N neurons in memory order (the Python side
// permutes a channels-last (T, B, C, H, W) into (T, B, H, W, C)); the currents z may also be
// one step (N) held for all T steps (direct input), whose gradient is then the sum over the
// steps; scale is (N); theta and v0 are the shortest run of values that repeats over a step
// (C values for a per-channel θ of a channels-last layer, one for a scalar). Currents, spikes
// and their gradients are float32 or bfloat16 (the bf16 simulation; training under bf16
// autocast); membranes, the backward's ε and all arithmetic are float32 either way, so a
// bfloat16 scan equals the float32 scan of the same currents with its outputs rounded to
// bfloat16. The scan without gradient may also write its spikes as uint8 codes.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// neurons per block: the block's state (v or ε, and θ) stays in L1 across the time loop
constexpr int64_t BLOCK = 512;

// float -> bfloat16 bits rounded to nearest even, and back (as torch converts finite values)
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// the surrogates with a kernel (sigmoid's exp does not vectorise without -ffast-math: it runs
// the eager scan)
enum Kind : int64_t { ATAN = 0, TRIANGLE = 1, RECTANGLE = 2, LEE = 3 };

struct Surrogate {
  float width, inv_w, a, b;  // a = π / 2w, b = 1 / 2w (atan)
};

// g(x) of spikeforge.neurons.surrogate, in the order its in-place chains compute it
template <int64_t Kind>
inline float surrogate(float x, const Surrogate& g) {
  if constexpr (Kind == ATAN) {
    float y = x * g.a;
    y = y * y + 1.0f;
    return (1.0f / y) * g.b;
  } else if constexpr (Kind == TRIANGLE) {
    return std::max(std::abs(x) * -g.inv_w + 1.0f, 0.0f) * g.inv_w;
  } else {  // RECTANGLE
    return static_cast<float>(std::abs(x) < g.width * 0.5f) * g.inv_w;
  }
}

void check(const torch::Tensor& x, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == dtype && x.is_contiguous() &&
                  x.numel() == numel,
              "lif_kernels: ", name, " must be a contiguous CPU tensor of ", numel, " ",
              c10::toString(dtype), " values");
}

// currents (or their gradient) of T steps of N neurons, or of one step held for all T steps;
// returns the distance between steps: N, or 0 for one held step
int64_t check_steps(const torch::Tensor& z, at::ScalarType dtype, int64_t T, int64_t N,
                    const char* name) {
  TORCH_CHECK(z.device().is_cpu() && z.scalar_type() == dtype && z.is_contiguous() &&
                  (z.numel() == T * N || z.numel() == N),
              "lif_kernels: ", name, " must be a contiguous CPU tensor of ", T, " x ", N,
              " or ", N, " ", c10::toString(dtype), " values");
  return z.numel() == T * N ? N : 0;
}

// a per-neuron quantity as a run of values repeating over the N neurons of a step
int64_t check_period(const torch::Tensor& x, int64_t N, const char* name) {
  const int64_t period = x.numel();
  TORCH_CHECK(period > 0 && N % period == 0, "lif_kernels: ", name, " has ", period,
              " values, which do not repeat over a step of ", N, " neurons");
  check(x, at::kFloat, period, name);
  return period;
}

// dst[i] = src[(b0 + i) mod period], i < len: a block's values of a per-neuron quantity
// given as the run of `period` values that repeats over a step (one per channel, say)
inline void gather_block(const float* src, int64_t period, int64_t b0, int64_t len, float* dst) {
  for (int64_t i = 0, j = b0 % period; i < len; ++i, j = j + 1 == period ? 0 : j + 1) {
    dst[i] = src[j];
  }
}

// currents and spikes as stored: float32, or bfloat16 as its bits
inline float load(float x) { return x; }
inline float load(uint16_t x) { return from_bf16(x); }
template <typename Out>
inline Out store(float x) {
  if constexpr (std::is_same_v<Out, float>) {
    return x;
  } else if constexpr (std::is_same_v<Out, uint8_t>) {
    return static_cast<uint8_t>(x);  // a spike's uint8 code (0 or 1)
  } else {
    return to_bf16(x);  // exact for a spike (0 or 1)
  }
}

template <typename In, bool Subtract, bool Leaky>
void forward_loop(int64_t T, int64_t N, const In* __restrict__ zp, int64_t z_step,
                  const float* th, int64_t th_period, const float* v0, int64_t v0_period, float l,
                  In* __restrict__ op, bool* __restrict__ fp, uint16_t* __restrict__ mp) {
  at::parallel_for(0, N, BLOCK, [&](int64_t begin, int64_t end) {
    float v[BLOCK], theta[BLOCK];
    for (int64_t b0 = begin; b0 < end; b0 += BLOCK) {
      const int64_t len = std::min(end, b0 + BLOCK) - b0;
      gather_block(th, th_period, b0, len, theta);
      gather_block(v0, v0_period, b0, len, v);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t o = t * N + b0;
        for (int64_t i = 0; i < len; ++i) {
          const float m = (Leaky ? v[i] * l : v[i]) + load(zp[t * z_step + b0 + i]);
          const bool spike = m >= theta[i];
          const float s = static_cast<float>(static_cast<int>(spike));  // GCC vectorises this form
          mp[o + i] = to_bf16(m);
          op[o + i] = store<In>(s);
          fp[o + i] = spike;
          // m − s·m of the eager scan is a select for finite m (a branch would not vectorise)
          if constexpr (Subtract) {
            v[i] = m - s * theta[i];
          } else {
            v[i] = spike ? 0.0f : m;
          }
        }
      }
    }
  });
}

template <typename In, int64_t Kind, bool Subtract, bool Detach, bool Unit>
void backward_loop(int64_t T, int64_t N, const In* __restrict__ gp,
                   const uint16_t* __restrict__ mp, const uint8_t* __restrict__ fp,
                   const float* th, int64_t th_period, const float* __restrict__ sc, float c,
                   Surrogate g, In* __restrict__ dz, bool summed) {
  at::parallel_for(0, N, BLOCK, [&](int64_t begin, int64_t end) {
    float eps[BLOCK], theta[BLOCK], total[BLOCK];
    for (int64_t b0 = begin; b0 < end; b0 += BLOCK) {
      const int64_t len = std::min(end, b0 + BLOCK) - b0;
      std::fill(eps, eps + len, 0.0f);
      std::fill(total, total + len, 0.0f);
      gather_block(th, th_period, b0, len, theta);
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t o = t * N + b0;
        for (int64_t i = 0; i < len; ++i) {
          const float theta_n = theta[i];
          const bool spike = fp[o + i] != 0;
          const float s = spike ? 1.0f : 0.0f;
          const float m = from_bf16(mp[o + i]);
          float sigma;
          if constexpr (Kind == LEE) {
            sigma = s * sc[b0 + i];
          } else {
            const float inv = 1.0f / theta_n;
            sigma = surrogate<Kind>((m - theta_n) * inv, g);
            if constexpr (!Unit) sigma = sigma * inv;
          }
          float delta = load(gp[o + i]);
          if constexpr (!Detach) {
            if constexpr (Subtract) {
              delta = delta - eps[i] * theta_n;
            } else {
              delta = delta - eps[i] * m;
            }
          }
          delta = delta * sigma;
          float e = eps[i];
          if constexpr (!Subtract) e = spike ? 0.0f : e;  // ε − s·ε
          delta = delta + e;
          if (summed) {  // one current held for all steps: Σ_t δ(t), in float32
            total[i] = total[i] + delta;
          } else {
            dz[o + i] = store<In>(delta);
          }
          eps[i] = delta * c;  // carried in float32 also for bfloat16 gradients
        }
      }
      if (summed) {
        for (int64_t i = 0; i < len; ++i) dz[b0 + i] = store<In>(total[i]);
      }
    }
  });
}

template <typename In>
using BackwardLoop = void (*)(int64_t, int64_t, const In*, const uint16_t*, const uint8_t*,
                              const float*, int64_t, const float*, float, Surrogate, In*, bool);

template <typename In, int64_t Kind>
BackwardLoop<In> backward_for(bool subtract, bool detach, bool unit) {
  const int64_t i = subtract * 4 + detach * 2 + unit;
  static const BackwardLoop<In> loops[8] = {
      backward_loop<In, Kind, false, false, false>, backward_loop<In, Kind, false, false, true>,
      backward_loop<In, Kind, false, true, false>,  backward_loop<In, Kind, false, true, true>,
      backward_loop<In, Kind, true, false, false>,  backward_loop<In, Kind, true, false, true>,
      backward_loop<In, Kind, true, true, false>,   backward_loop<In, Kind, true, true, true>};
  return loops[i];
}

template <typename In>
BackwardLoop<In> backward_of(int64_t kind, bool subtract, bool detach, bool unit) {
  return kind == ATAN        ? backward_for<In, ATAN>(subtract, detach, unit)
         : kind == TRIANGLE  ? backward_for<In, TRIANGLE>(subtract, detach, unit)
         : kind == RECTANGLE ? backward_for<In, RECTANGLE>(subtract, detach, unit)
                             : backward_for<In, LEE>(subtract, detach, unit);
}

// float32 stays float*, bfloat16 is read and written as its bits
template <typename In>
In* bits_of(const torch::Tensor& x) {
  if constexpr (std::is_same_v<In, float>) {
    return x.data_ptr<float>();
  } else {
    return reinterpret_cast<uint16_t*>(x.data_ptr<at::BFloat16>());
  }
}

// float32 or bfloat16, the dtypes of currents, spikes and their gradients
at::ScalarType current_dtype(const torch::Tensor& z, const char* name) {
  const auto dtype = z.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "lif_kernels: ", name,
              " must be float32 or bfloat16, got ", c10::toString(dtype));
  return dtype;
}

template <typename In>
void run_forward(bool subtract, bool leaky, int64_t T, int64_t N, const torch::Tensor& z,
                 int64_t z_step, const torch::Tensor& theta, int64_t th_period,
                 const torch::Tensor& v0,
                 int64_t v0_period, float l, torch::Tensor& out, torch::Tensor& fired,
                 torch::Tensor& membrane) {
  const auto loop = subtract ? (leaky ? forward_loop<In, true, true>
                                      : forward_loop<In, true, false>)
                             : (leaky ? forward_loop<In, false, true>
                                      : forward_loop<In, false, false>);
  loop(T, N, bits_of<In>(z), z_step, theta.data_ptr<float>(), th_period,
       v0.data_ptr<float>(), v0_period, l, bits_of<In>(out), fired.data_ptr<bool>(),
       reinterpret_cast<uint16_t*>(membrane.data_ptr<at::BFloat16>()));
}

// The scan without gradient, step by step over all N neurons (each step's currents and
// spikes one contiguous stream, v per neuron, θ a run of L values repeating over the step):
// fewer concurrent memory streams than the blocked loop of BPTT, which writes three outputs
// per step
template <typename In, typename Out, bool Subtract, bool Leaky, bool Value>
void infer_loop(int64_t T, int64_t N, const In* __restrict__ zp, int64_t z_step,
                const float* __restrict__ thb, int64_t L, float l, Out* __restrict__ op,
                float* __restrict__ v) {
  for (int64_t t = 0; t < T; ++t) {
    const In* __restrict__ z = zp + t * z_step;
    Out* __restrict__ o = op + t * N;
    at::parallel_for(0, N, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end;) {
        const int64_t off = a % L, len = std::min(end - a, L - off);
        const float* __restrict__ th = thb + off;
        float* __restrict__ va = v + a;
        const In* __restrict__ za = z + a;
        Out* __restrict__ oa = o + a;
        for (int64_t i = 0; i < len; ++i) {
          const float m = (Leaky ? va[i] * l : va[i]) + load(za[i]);
          const bool spike = m >= th[i];
          const float s = static_cast<float>(static_cast<int>(spike));
          oa[i] = store<Out>(Value ? s * th[i] : s);
          if constexpr (Subtract) {
            va[i] = m - s * th[i];
          } else {
            va[i] = spike ? 0.0f : m;
          }
        }
        a += len;
      }
    });
  }
}

template <typename In, typename Out, bool Value>
void run_infer_loop(bool subtract, bool leaky, int64_t T, int64_t N, const In* zp,
                    int64_t z_step, const float* th, int64_t L, float l, Out* op, float* v) {
  const auto loop = subtract ? (leaky ? infer_loop<In, Out, true, true, Value>
                                      : infer_loop<In, Out, true, false, Value>)
                             : (leaky ? infer_loop<In, Out, false, true, Value>
                                      : infer_loop<In, Out, false, false, Value>);
  loop(T, N, zp, z_step, th, L, l, op, v);
}

// the spikes in the currents' dtype (s, or θ·s where value), or as uint8 codes (s)
template <typename In>
void run_infer(bool subtract, bool leaky, bool value, int64_t T, int64_t N, const In* zp,
               int64_t z_step, const float* th, int64_t L, float l, torch::Tensor& out,
               float* v) {
  if (out.scalar_type() == at::kByte) {
    run_infer_loop<In, uint8_t, false>(subtract, leaky, T, N, zp, z_step, th, L, l,
                                       out.data_ptr<uint8_t>(), v);
    return;
  }
  const auto loop = value ? run_infer_loop<In, In, true> : run_infer_loop<In, In, false>;
  loop(subtract, leaky, T, N, zp, z_step, th, L, l, bits_of<In>(out), v);
}

}  // namespace

// m(t) = l·v + z(t) from v = v0; s(t) = [m(t) >= θ]; v = m − θ s (subtract) or m − m s
// (zero), for T = out's steps (z: T steps, or one held for all). Writes out (the spikes, in
// z's dtype), fired (as booleans), membrane (m in bfloat16).
void scan_forward(const torch::Tensor& z, const torch::Tensor& theta, const torch::Tensor& v0,
                  double leak, bool subtract, torch::Tensor& out, torch::Tensor& fired,
                  torch::Tensor& membrane) {
  const int64_t T = out.size(0), N = T ? out.numel() / T : 0;
  const auto dtype = current_dtype(z, "z");
  const int64_t z_step = check_steps(z, dtype, T, N, "z");
  check(out, dtype, T * N, "out");
  check(fired, at::kBool, T * N, "fired");
  check(membrane, at::kBFloat16, T * N, "membrane");
  const int64_t th_period = check_period(theta, N, "theta");
  const int64_t v0_period = check_period(v0, N, "v0");
  const auto run = dtype == at::kFloat ? run_forward<float> : run_forward<uint16_t>;
  run(subtract, leak != 1.0, T, N, z, z_step, theta, th_period, v0, v0_period,
      static_cast<float>(leak), out, fired, membrane);
}

// The same scan without gradient: from the membranes v (N float32 values), which it leaves
// at their state after the last step; z float32 or bfloat16; out holds the spikes s, or θ·s
// where value (the eager scan's s, then s·θ, rounded alike), in z's dtype, or the spikes s
// as uint8 codes (not value), what the integer kernels of spikeforge.int8 read.
void scan_infer(const torch::Tensor& z, const torch::Tensor& theta, torch::Tensor& v,
                double leak, bool subtract, bool value, torch::Tensor& out) {
  const int64_t T = out.size(0), N = T ? out.numel() / T : 0;
  const auto dtype = current_dtype(z, "z");
  const int64_t z_step = check_steps(z, dtype, T, N, "z");
  const bool codes = out.scalar_type() == at::kByte;
  TORCH_CHECK(!(codes && value), "lif_kernels: uint8 codes are spikes s, not values θ·s");
  check(out, codes ? at::kByte : dtype, T * N, "out");
  check(v, at::kFloat, N, "v");
  const int64_t th_period = check_period(theta, N, "theta");
  float* vp = v.data_ptr<float>();
  const float l = static_cast<float>(leak);
  // θ as a run of L values that repeats over the step (a whole number of periods, at least
  // 4096 values or the whole step): read from the L1 cache, not one value per neuron
  const int64_t L = th_period * ((4096 + th_period - 1) / th_period);
  std::vector<float> th(std::min(L, N));
  gather_block(theta.data_ptr<float>(), th_period, 0, th.size(), th.data());
  if (dtype == at::kFloat) {
    run_infer<float>(subtract, leak != 1.0, value, T, N, bits_of<float>(z), z_step, th.data(),
                     th.size(), l, out, vp);
  } else {
    run_infer<uint16_t>(subtract, leak != 1.0, value, T, N, bits_of<uint16_t>(z), z_step,
                        th.data(), th.size(), l, out, vp);
  }
}

// ∂L/∂z from ∂L/∂s by the reverse recurrence of spikeforge.neurons.bptt (ε(T) = 0):
//   σ = g((m − θ)/θ)/θ (no last /θ if unit), or s·scale (lee)
//   δ = (∂L/∂s − ε·θ)·σ (subtract), (∂L/∂s − ε·m)·σ (zero), ∂L/∂s·σ (detach)
//   ε ← ε − s·ε (zero);  δ ← δ + ε;  ε ← c·δ
// grad_z is δ (T, N), or Σ_t δ(t) (N) for currents held for all steps
void scan_backward(const torch::Tensor& grad_out, const torch::Tensor& membrane,
                   const torch::Tensor& fired, const torch::Tensor& theta,
                   const torch::Tensor& scale, double carry, bool subtract, bool detach,
                   bool unit, int64_t kind, double width, torch::Tensor& grad_z) {
  const int64_t T = grad_out.size(0), N = T ? grad_out.numel() / T : 0;
  const auto dtype = current_dtype(grad_out, "grad_out");
  check(grad_out, dtype, T * N, "grad_out");
  const bool summed = check_steps(grad_z, dtype, T, N, "grad_z") == 0 && T > 1;
  check(membrane, at::kBFloat16, T * N, "membrane");
  check(fired, at::kBool, T * N, "fired");
  const int64_t th_period = check_period(theta, N, "theta");
  TORCH_CHECK(kind >= ATAN && kind <= LEE, "lif_kernels: no kernel for surrogate ", kind);
  if (kind == LEE) check(scale, at::kFloat, N, "scale");
  const Surrogate g{static_cast<float>(width), static_cast<float>(1.0 / width),
                    static_cast<float>(M_PI / (2.0 * width)), static_cast<float>(0.5 / width)};
  const auto* mp = reinterpret_cast<const uint16_t*>(membrane.data_ptr<at::BFloat16>());
  const auto* fp = reinterpret_cast<const uint8_t*>(fired.data_ptr<bool>());
  const float* sc = kind == LEE ? scale.data_ptr<float>() : nullptr;
  const float c = static_cast<float>(carry);
  if (dtype == at::kFloat) {
    backward_of<float>(kind, subtract, detach, unit)(T, N, bits_of<float>(grad_out), mp, fp,
                                                     theta.data_ptr<float>(), th_period, sc, c,
                                                     g, bits_of<float>(grad_z), summed);
  } else {
    backward_of<uint16_t>(kind, subtract, detach, unit)(
        T, N, bits_of<uint16_t>(grad_out), mp, fp, theta.data_ptr<float>(), th_period, sc, c, g,
        bits_of<uint16_t>(grad_z), summed);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("scan_forward", &scan_forward, "the binary LIF scan forward (see the source)");
  module.def("scan_infer", &scan_infer, "the scan without gradient (see the source)");
  module.def("scan_backward", &scan_backward, "its backward (see the source)");
}
