// The weight gradient of a convolution whose input is sparse (spikes), computed event by
// event on a CPU. For a stride-1, undilated, ungrouped convolution with zero padding (ph, pw),
//
//   ∂L/∂W[o, c, kh, kw] = Σ_n Σ_{ih, iw} x[n, c, ih, iw] · g[n, o, ih + ph − kh, iw + pw − kw]
//
// (g = ∂L/∂y, terms outside the output dropped): only the nonzero inputs contribute. Per
// image, the nonzero inputs of each channel are listed (their row, column and value), then
// for each channel and kernel offset one accumulator of O values, held in vector registers,
// sums the rows of g those inputs reach, read from the image's g in the L2 cache. A dense
// convolution backward does the work of every zero input too; at the firing rates of SNNs
// (a few to 20% nonzero) this is several times less arithmetic.
//
// Tensors are float32 in channels-last memory order: x (N, H, W, C), g (N, OH, OW, O). The
// sum runs in another order than a dense backward's: equal to float rounding.
//
// The forward of such a convolution (any stride and zero padding, undilated, ungrouped),
//
//   y[n, o, oh, ow] = b[o] + Σ_{kh, kw, c} x[n, c, oh·sh − ph + kh, ow·sw − pw + kw] · W[o, c, kh, kw],
//
// is summed the same way, output by output: each input row is listed once (per column, its
// nonzero channels and values), and each output pixel adds the weight rows (O values, laid
// out (KH, KW, C, O)) of the listed inputs in its window into accumulators held in vector
// registers.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// one accumulator tile of WIDTH output values (a compile-time width, so that it stays in
// registers), or of `tail` < 16 values (WIDTH = 0)
template <int64_t WIDTH>
void accumulate(const int32_t* __restrict__ where, const float* __restrict__ value,
                int64_t count, const float* __restrict__ g, int64_t O, int64_t OH, int64_t OW,
                int64_t dh, int64_t dw, int64_t tail, float* __restrict__ out) {
  const int64_t width = WIDTH ? WIDTH : tail;
  float a[WIDTH ? WIDTH : 16] = {};
  for (int64_t j = 0; j < count; ++j) {
    const int64_t oh = (where[j] >> 16) + dh, ow = (where[j] & 0xFFFF) + dw;
    if (oh < 0 || oh >= OH || ow < 0 || ow >= OW) continue;
    const float v = value[j];
    const float* __restrict__ row = g + (oh * OW + ow) * O;
    for (int64_t i = 0; i < width; ++i) a[i] += v * row[i];
  }
  for (int64_t i = 0; i < width; ++i) out[i] += a[i];
}

// accumulate over all O outputs in tiles of 128, 64, 16 and fewer values
void accumulate_row(const int32_t* where, const float* value, int64_t count, const float* g,
                    int64_t O, int64_t OH, int64_t OW, int64_t dh, int64_t dw, float* out) {
  for (int64_t o0 = 0; o0 < O;) {
    const int64_t left = O - o0;
    const int64_t width = left >= 128 ? 128 : left >= 64 ? 64 : std::min<int64_t>(16, left);
    const auto tile = width == 128  ? accumulate<128>
                      : width == 64 ? accumulate<64>
                      : width == 16 ? accumulate<16>
                                    : accumulate<0>;
    tile(where, value, count, g + o0, O, OH, OW, dh, dw, width, out + o0);
    o0 += width;
  }
}

// visit(c) for each nonzero q[c] of one pixel's C channels, in channel order
template <typename Visit>
inline void for_each_nonzero(const float* q, int64_t C, Visit visit) {
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t len = std::min<int64_t>(64, C - c0);
    uint64_t mask = 0;  // one comparison per value, vectorised; then the set bits only
    for (int64_t i = 0; i < len; ++i) mask |= static_cast<uint64_t>(q[c0 + i] != 0.0f) << i;
    while (mask) {
      visit(c0 + __builtin_ctzll(mask));
      mask &= mask - 1;
    }
  }
}

// the nonzero inputs of one image, by channel: where[c·P + k] = (ih << 16) | iw and its value
void list_nonzero(const float* x, int64_t H, int64_t W, int64_t C, int32_t* where,
                  float* value, int64_t* count) {
  const int64_t P = H * W;
  std::fill(count, count + C, 0);
  for (int64_t p = 0; p < P; ++p) {
    const float* q = x + p * C;
    const int32_t at = static_cast<int32_t>(((p / W) << 16) | (p % W));
    for_each_nonzero(q, C, [&](int64_t c) {
      const int64_t k = count[c]++;
      where[c * P + k] = at;
      value[c * P + k] = q[c];
    });
  }
}

// --- the forward ---------------------------------------------------------------------------

// one vector register of floats: 16 with AVX-512, else 8 (AVX2), and how many of them the
// accumulators of one output tile may hold (of 32 or 16)
#if defined(__AVX512F__)
constexpr int64_t LANES = 16;
constexpr int REGISTERS = 16;
#else
constexpr int64_t LANES = 8;
constexpr int REGISTERS = 8;
#endif
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

// one input row (n, ih) listed: per column iw, count[iw] nonzero channels, as the offsets c·O
// of their weight rows and their values
struct ListedRow {
  int64_t key = -1;  // n·H + ih, or -1
  std::vector<int32_t> count, offset;
  std::vector<float> value;
};

void list_row(const float* x, int64_t W, int64_t C, int64_t O, ListedRow& row) {
  row.count.resize(W);
  row.offset.resize(W * C);
  row.value.resize(W * C);
  for (int64_t iw = 0; iw < W; ++iw) {
    const float* q = x + iw * C;
    int32_t* offset = row.offset.data() + iw * C;
    float* value = row.value.data() + iw * C;
    int32_t k = 0;
    for_each_nonzero(q, C, [&](int64_t c) {
      offset[k] = static_cast<int32_t>(c * O);
      value[k++] = q[c];
    });
    row.count[iw] = k;
  }
}

struct ConvShape {
  int64_t C, H, W, O, KH, KW, sh, sw, ph, pw, OH, OW;
};

inline vec load_vec(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// y[o0, o0 + TILE·LANES) of output pixel (row `rows`, column ow), padded weights of O_pad ≥
// o0 + TILE·LANES values per row; SETS independent accumulator sets keep the vector units
// busy (an add waits for the previous one into the same register)
template <int TILE>
void output_tile(const ConvShape& s, const ListedRow* const* rows, int64_t ow, int64_t o0,
                 int64_t O_pad, const float* w, const float* bias, vec* out) {
  constexpr int SETS = std::max(1, std::min(8, REGISTERS / TILE));
  vec a[SETS][TILE];
  for (int q = 0; q < SETS; ++q) {
    for (int k = 0; k < TILE; ++k) a[q][k] = vec{};
  }
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const ListedRow* row = rows[kh];
    if (row == nullptr) continue;
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t iw = ow * s.sw - s.pw + kw;
      if (iw < 0 || iw >= s.W) continue;
      const float* wk = w + (kh * s.KW + kw) * s.C * O_pad + o0;
      const int32_t* offset = row->offset.data() + iw * s.C;
      const float* value = row->value.data() + iw * s.C;
      const int32_t n = row->count[iw];
      int32_t j = 0;
      for (; j + SETS <= n; j += SETS) {
        for (int q = 0; q < SETS; ++q) {
          const float v = value[j + q];
          const float* wr = wk + offset[j + q];
          for (int k = 0; k < TILE; ++k) a[q][k] += v * load_vec(wr + k * LANES);
        }
      }
      for (; j < n; ++j) {
        const float* wr = wk + offset[j];
        for (int k = 0; k < TILE; ++k) a[0][k] += value[j] * load_vec(wr + k * LANES);
      }
    }
  }
  for (int k = 0; k < TILE; ++k) {
    vec t = load_vec(bias + o0 + k * LANES);
    for (int q = 0; q < SETS; ++q) t += a[q][k];
    out[k] = t;
  }
}

}  // namespace

// ∂L/∂W (O, C, KH, KW), laid out as (KH, KW, C, O), from x (N, C, H, W) and g (N, O, OH, OW),
// both float32 channels-last; padding (ph, pw), stride 1
torch::Tensor sparse_input_grad_weight(const torch::Tensor& x, const torch::Tensor& g,
                                       int64_t KH, int64_t KW, int64_t ph, int64_t pw) {
  TORCH_CHECK(x.dim() == 4 && g.dim() == 4 && x.scalar_type() == at::kFloat &&
                  g.scalar_type() == at::kFloat && x.size(0) == g.size(0),
              "conv_kernels: x (N, C, H, W) and g (N, O, OH, OW) float32 expected");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  g.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv_kernels: x and g must be channels-last");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = g.size(1), OH = g.size(2), OW = g.size(3);
  TORCH_CHECK(OH == H + 2 * ph - KH + 1 && OW == W + 2 * pw - KW + 1 && H < 32768 && W < 65536,
              "conv_kernels: g's size does not match a stride-1 convolution of x");
  const int64_t size = KH * KW * C * O, P = H * W;
  // the images in `parts` consecutive runs, each summed into its own copy of ∂L/∂W, added at
  // the end: one per thread, fewer where the copies would pass 256 MiB (many cores, a large
  // layer); a fixed split for a given thread count, so the result is reproducible
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>({at::get_num_threads(), N, (int64_t{256} << 20) / (4 * size)}));
  std::vector<float> partial(parts * size, 0.0f);
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> where(C * P);
    std::vector<float> value(C * P);
    std::vector<int64_t> count(C);
    for (int64_t part = first; part < last; ++part) {
      float* sum = partial.data() + part * size;
      for (int64_t n = part * N / parts; n < (part + 1) * N / parts; ++n) {
        list_nonzero(xp + n * P * C, H, W, C, where.data(), value.data(), count.data());
        const float* gn = gp + n * OH * OW * O;
        for (int64_t c = 0; c < C; ++c) {
          if (!count[c]) continue;
          for (int64_t kh = 0; kh < KH; ++kh) {
            for (int64_t kw = 0; kw < KW; ++kw) {
              accumulate_row(where.data() + c * P, value.data() + c * P, count[c], gn, O, OH,
                             OW, ph - kh, pw - kw, sum + ((kh * KW + kw) * C + c) * O);
            }
          }
        }
      }
    }
  });
  auto out = torch::zeros({KH, KW, C, O}, x.options());
  float* op = out.data_ptr<float>();
  for (int64_t part = 0; part < parts; ++part) {
    const float* s = partial.data() + part * size;
    for (int64_t i = 0; i < size; ++i) op[i] += s[i];
  }
  return out.permute({3, 2, 0, 1});
}

// y (N, O, OH, OW), channels-last, from x (N, C, H, W) channels-last, the weight laid out
// (KH, KW, C, O_pad) with O_pad a multiple of 16 (zeros past O) and the bias (O_pad values),
// all float32; stride (sh, sw), zero padding (ph, pw)
torch::Tensor sparse_input_conv2d(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias, int64_t O, int64_t sh, int64_t sw,
                                  int64_t ph, int64_t pw) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv_kernels: x must be a float32 channels-last (N, C, H, W) tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && weight.size(2) == x.size(1) &&
                  weight.size(3) % 16 == 0 && weight.size(3) >= O,
              "conv_kernels: weight must be float32 (KH, KW, C, O_pad), O_pad a multiple of 16");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() &&
                  bias.numel() == weight.size(3),
              "conv_kernels: bias must hold O_pad float32 values");
  ConvShape s{x.size(1), x.size(2), x.size(3), O, weight.size(0), weight.size(1),
              sh, sw, ph, pw, 0, 0};
  s.OH = (s.H + 2 * ph - s.KH) / sh + 1;
  s.OW = (s.W + 2 * pw - s.KW) / sw + 1;
  const int64_t N = x.size(0), O_pad = weight.size(3);
  TORCH_CHECK(s.OH > 0 && s.OW > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0,
              "conv_kernels: no output for this input size, stride and padding");
  auto out = torch::empty({N, O, s.OH, s.OW},
                          x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * s.OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<ListedRow> listed(s.KH);  // the last KH input rows listed, by ih mod KH
    std::vector<const ListedRow*> rows(s.KH);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.OH, oh = r % s.OH;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ih = oh * sh - ph + kh;
        rows[kh] = nullptr;
        if (ih < 0 || ih >= s.H) continue;
        ListedRow& slot = listed[ih % s.KH];
        if (slot.key != n * s.H + ih) {
          list_row(xp + (n * s.H + ih) * s.W * s.C, s.W, s.C, O_pad, slot);
          slot.key = n * s.H + ih;
        }
        rows[kh] = &slot;
      }
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        float* o = op + (r * s.OW + ow) * O;
        for (int64_t o0 = 0; o0 < O_pad;) {
          vec acc[8];
          const int64_t left = O_pad - o0;
          const int tile = left >= 8 * LANES   ? 8
                           : left >= 4 * LANES ? 4
                           : left >= 2 * LANES ? 2
                                               : 1;
          const auto run = tile == 8   ? output_tile<8>
                           : tile == 4 ? output_tile<4>
                           : tile == 2 ? output_tile<2>
                                       : output_tile<1>;
          run(s, rows.data(), ow, o0, O_pad, wp, bp, acc);
          for (int k = 0; k < tile; ++k) {
            const int64_t c = o0 + k * LANES;
            if (c < O) std::memcpy(o + c, &acc[k], sizeof(float) * std::min(LANES, O - c));
          }
          o0 += tile * LANES;
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sparse_input_grad_weight", &sparse_input_grad_weight,
             "the weight gradient of a convolution, from its nonzero inputs (see the source)");
  module.def("sparse_input_conv2d", &sparse_input_conv2d,
             "a convolution summed over its nonzero inputs (see the source)");
}
