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

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
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

// the nonzero inputs of one image, by channel: where[c·P + k] = (ih << 16) | iw and its value
void list_nonzero(const float* x, int64_t H, int64_t W, int64_t C, int32_t* where,
                  float* value, int64_t* count) {
  const int64_t P = H * W;
  std::fill(count, count + C, 0);
  for (int64_t p = 0; p < P; ++p) {
    const float* q = x + p * C;
    const int32_t at = static_cast<int32_t>(((p / W) << 16) | (p % W));
    for (int64_t c0 = 0; c0 < C; c0 += 64) {
      const int64_t len = std::min<int64_t>(64, C - c0);
      uint64_t mask = 0;  // one comparison per value, vectorised; then the set bits only
      for (int64_t i = 0; i < len; ++i) mask |= static_cast<uint64_t>(q[c0 + i] != 0.0f) << i;
      while (mask) {
        const int64_t c = c0 + __builtin_ctzll(mask);
        mask &= mask - 1;
        const int64_t k = count[c]++;
        where[c * P + k] = at;
        value[c * P + k] = q[c];
      }
    }
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sparse_input_grad_weight", &sparse_input_grad_weight,
             "the weight gradient of a convolution, from its nonzero inputs (see the source)");
}
