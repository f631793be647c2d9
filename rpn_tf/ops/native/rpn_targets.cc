// rpn-tf native target kernels: the article's anchor labeling, balanced sampling and dense targets in two CPU ops.
//
// They compute exactly what the pure-TensorFlow path of rpn_tf/ops/matching.py, sampling.py and targets.py computes
// (same float32 operations in the same order, no FMA contraction: build with -ffp-contract=off), in one pass over
// the [G, A_in] IoU matrix instead of ~20 TensorFlow ops over it. Built on first use by rpn_tf/ops/native/__init__.py
// against the installed TensorFlow's headers; the Python side falls back to the pure-TensorFlow ops without it.
//
// Shapes: B images, G GT boxes per image (padded rows allowed), A anchors, A_in anchors inside the image.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace rpn_tf_native {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("RpnTfLabelAndSample")
    .Input("gt_boxes: float")       // [B, G, 4] yxyx
    .Input("valid_sizes: float")    // [B, 2] unpadded (h, w) per image; [0, 2] when not used
    .Input("seeds: int64")          // [B, 2] stateless sampling seeds (as tf.random.stateless_uniform's)
    .Input("inside_anchors: float") // [A_in, 4] yxyx
    .Input("region_coords: float")  // [A_in, 2] compared with valid_sizes (anchor y2, x2 or cell origins)
    .Output("labels: int32")        // [B, A_in] in {1, 0, -1}, sampled
    .Output("matched_gt_index: int32")  // [B, A_in], -1 where no GT
    .Attr("positive_iou: float")
    .Attr("negative_iou: float")
    .Attr("min_gt_size: float")
    .Attr("tie_factor: float")
    .Attr("num_samples: int")       // 0: no sampling (every labeled anchor kept)
    .Attr("max_positives: int")
    .Attr("region_border: float")
    .Attr("region_strict: bool")    // valid iff coord < size (cell origins) instead of coord <= size + border
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle boxes, anchors;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &boxes));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &anchors));
      ShapeHandle out = c->Matrix(c->Dim(boxes, 0), c->Dim(anchors, 0));
      c->set_output(0, out);
      c->set_output(1, out);
      return absl::OkStatus();
    });

REGISTER_OP("RpnTfDenseTargets")
    .Input("labels_inside: int32")     // [B, A_in]
    .Input("matched_inside: int32")    // [B, A_in]
    .Input("inverse_index: int32")     // [A]: position among the inside anchors, A_in for outside anchors
    .Input("anchor_terms: float")      // [A, 4] (cy, cx, log h, log w)
    .Input("anchor_scales: float")     // [A, 4] (wy / h, wx / w, wh, ww)
    .Input("gt_terms: float")          // [B, G, 4]
    .Output("labels: int32")           // [B, A]
    .Output("deltas: float")           // [B, A, 4]
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle labels, inverse;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &labels));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &inverse));
      c->set_output(0, c->Matrix(c->Dim(labels, 0), c->Dim(inverse, 0)));
      c->set_output(1, c->MakeShape({c->Dim(labels, 0), c->Dim(inverse, 0), c->MakeDim(4)}));
      return absl::OkStatus();
    });

REGISTER_OP("RpnTfSparseTargets")
    .Input("labels_inside: int32")     // [B, A_in], sampled
    .Input("matched_inside: int32")    // [B, A_in]
    .Input("inside_index: int32")      // [A_in]: anchor index of each inside anchor
    .Input("anchor_terms: float")      // [A, 4]
    .Input("anchor_scales: float")     // [A, 4]
    .Input("gt_terms: float")          // [B, G, 4]
    .Output("indices: int32")          // [B, S]: the sampled anchors in anchor order, -1 past the sample
    .Output("labels: int32")           // [B, S]
    .Output("deltas: float")           // [B, S, 4]
    .Attr("size: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle labels;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &labels));
      int64_t size;
      TF_RETURN_IF_ERROR(c->GetAttr("size", &size));
      c->set_output(0, c->Matrix(c->Dim(labels, 0), size));
      c->set_output(1, c->Matrix(c->Dim(labels, 0), size));
      c->set_output(2, c->MakeShape({c->Dim(labels, 0), c->MakeDim(size), c->MakeDim(4)}));
      return absl::OkStatus();
    });

namespace {

// Philox4x32-10 exactly as TensorFlow's random::PhiloxRandom, and the key / counter its stateless ops derive from a
// seed (StatelessRandomGetKeyCounter), so the sampling keys equal those of tf.random.stateless_uniform.
struct Philox {
  uint32_t counter[4];
  uint32_t key[2];

  static void Round(uint32_t* c, const uint32_t* k) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t r0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0];
    const uint32_t r1 = static_cast<uint32_t>(p1);
    const uint32_t r2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1];
    const uint32_t r3 = static_cast<uint32_t>(p0);
    c[0] = r0;
    c[1] = r1;
    c[2] = r2;
    c[3] = r3;
  }

  // The four outputs of the current counter; then the counter advances by one.
  void Next(uint32_t* out) {
    uint32_t c[4] = {counter[0], counter[1], counter[2], counter[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int round = 0; round < 10; ++round) {
      Round(c, k);
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    for (int j = 0; j < 4; ++j) out[j] = c[j];
    if (++counter[0] == 0 && ++counter[1] == 0 && ++counter[2] == 0) ++counter[3];
  }

  static Philox FromSeed(uint64_t seed0, uint64_t seed1) {
    Philox scramble{{static_cast<uint32_t>(seed0), static_cast<uint32_t>(seed0 >> 32), static_cast<uint32_t>(seed1),
                     static_cast<uint32_t>(seed1 >> 32)},
                    {0x3ec8f720u, 0x02461e29u}};
    uint32_t mix[4];
    scramble.Next(mix);
    return Philox{{0, 0, mix[2], mix[3]}, {mix[0], mix[1]}};
  }
};

// sampling._unique_random_keys: stateless_uniform([n], seed, 0, levels, int32) * n + index, levels = 2^31-1 // n.
// Element i is output i % 4 of the Philox block at counter + i / 4; eight blocks at a time, as vector lanes.
void SamplingKeys(int64_t seed0, int64_t seed1, int64_t n, int32_t* keys) {
  const int64_t levels = std::max<int64_t>(2147483647 / std::max<int64_t>(n, 1), 1);
  const uint32_t range = static_cast<uint32_t>(levels);
  const Philox start = Philox::FromSeed(static_cast<uint64_t>(seed0), static_cast<uint64_t>(seed1));
  const uint64_t low_start = (static_cast<uint64_t>(start.counter[1]) << 32) | start.counter[0];
  constexpr int kLanes = 8;
  const int64_t blocks = (n + 3) / 4;
  for (int64_t first = 0; first < blocks; first += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) {  // counter + block index, a 128-bit addition
      const uint64_t low = low_start + static_cast<uint64_t>(first + lane);
      const uint32_t carry = low < low_start;
      c0[lane] = static_cast<uint32_t>(low);
      c1[lane] = static_cast<uint32_t>(low >> 32);
      c2[lane] = start.counter[2] + carry;
      c3[lane] = start.counter[3] + (carry & (c2[lane] == 0));
    }
    uint32_t k0 = start.key[0], k1 = start.key[1];
    for (int round = 0; round < 10; ++round) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[lane];
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[lane];
        const uint32_t r0 = static_cast<uint32_t>(p1 >> 32) ^ c1[lane] ^ k0;
        const uint32_t r2 = static_cast<uint32_t>(p0 >> 32) ^ c3[lane] ^ k1;
        c1[lane] = static_cast<uint32_t>(p1);
        c3[lane] = static_cast<uint32_t>(p0);
        c0[lane] = r0;
        c2[lane] = r2;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int lane = 0; lane < kLanes && first + lane < blocks; ++lane) {
      const uint32_t bits[4] = {c0[lane], c1[lane], c2[lane], c3[lane]};
      const int64_t base = 4 * (first + lane);
      for (int64_t j = 0; j < 4 && base + j < n; ++j) {
        keys[base + j] = static_cast<int32_t>(bits[j] % range) * static_cast<int32_t>(n) + static_cast<int32_t>(base + j);
      }
    }
  }
}

constexpr int kBucketShift = 21;  // keys are in [0, 2^31): 1024 buckets of their top bits
constexpr int kBuckets = 1 << (31 - kBucketShift);

// The k-th largest (0-based) key among the anchors labeled `label`, of which there are more than k: a histogram of
// the keys' top bits finds the bucket holding it, then nth_element over that bucket only.
int32_t KthLargestKey(const int32_t* keys, const int32_t* labels, int64_t n, int32_t label, int64_t k,
                      std::vector<int32_t>* scratch) {
  int32_t counts[kBuckets] = {0};
  for (int64_t a = 0; a < n; ++a) counts[keys[a] >> kBucketShift] += labels[a] == label;
  int64_t above = 0;
  int bucket = kBuckets - 1;
  for (; bucket > 0 && above + counts[bucket] <= k; --bucket) above += counts[bucket];
  scratch->clear();
  for (int64_t a = 0; a < n; ++a) {
    if (labels[a] == label && (keys[a] >> kBucketShift) == bucket) scratch->push_back(keys[a]);
  }
  const int64_t index = k - above;
  std::nth_element(scratch->begin(), scratch->begin() + index, scratch->end(), std::greater<int32_t>());
  return (*scratch)[index];
}

// Maximum of row[0..n), eight independent accumulators (a single one is latency-bound).
float RowMax(const float* row, int64_t n) {
  float acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = -std::numeric_limits<float>::infinity();
  int64_t a = 0;
  for (; a + 8 <= n; a += 8) {
    for (int j = 0; j < 8; ++j) acc[j] = row[a + j] > acc[j] ? row[a + j] : acc[j];
  }
  for (; a < n; ++a) acc[0] = row[a] > acc[0] ? row[a] : acc[0];
  float result = acc[0];
  for (int j = 1; j < 8; ++j) result = acc[j] > result ? acc[j] : result;
  return result;
}

}  // namespace

class LabelAndSampleOp : public OpKernel {
 public:
  explicit LabelAndSampleOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("positive_iou", &positive_iou_));
    OP_REQUIRES_OK(c, c->GetAttr("negative_iou", &negative_iou_));
    OP_REQUIRES_OK(c, c->GetAttr("min_gt_size", &min_gt_size_));
    OP_REQUIRES_OK(c, c->GetAttr("tie_factor", &tie_factor_));
    OP_REQUIRES_OK(c, c->GetAttr("num_samples", &num_samples_));
    OP_REQUIRES_OK(c, c->GetAttr("max_positives", &max_positives_));
    OP_REQUIRES_OK(c, c->GetAttr("region_border", &region_border_));
    OP_REQUIRES_OK(c, c->GetAttr("region_strict", &region_strict_));
    OP_REQUIRES(c, num_samples_ >= 0 && max_positives_ >= 0,
                absl::InvalidArgumentError("num_samples and max_positives must be >= 0"));
  }

  void Compute(OpKernelContext* c) override {
    const Tensor& gt_t = c->input(0);
    const Tensor& sizes_t = c->input(1);
    const Tensor& seeds_t = c->input(2);
    const Tensor& anchors_t = c->input(3);
    const Tensor& region_t = c->input(4);
    OP_REQUIRES(c, gt_t.dims() == 3 && gt_t.dim_size(2) == 4,
                absl::InvalidArgumentError("gt_boxes must be [B, G, 4], got " + gt_t.shape().DebugString()));
    OP_REQUIRES(c, anchors_t.dims() == 2 && anchors_t.dim_size(1) == 4,
                absl::InvalidArgumentError("inside_anchors must be [A_in, 4]"));
    const int64_t batch = gt_t.dim_size(0), num_gt = gt_t.dim_size(1), num_in = anchors_t.dim_size(0);
    OP_REQUIRES(c, region_t.dims() == 2 && region_t.dim_size(0) == num_in && region_t.dim_size(1) == 2,
                absl::InvalidArgumentError("region_coords must be [A_in, 2]"));
    const bool use_sizes = sizes_t.NumElements() > 0;
    OP_REQUIRES(c, sizes_t.dims() == 2 && sizes_t.dim_size(1) == 2 && (!use_sizes || sizes_t.dim_size(0) == batch),
                absl::InvalidArgumentError("valid_sizes must be [B, 2] or [0, 2], got " +
                                           sizes_t.shape().DebugString()));
    const bool sample = num_samples_ > 0;
    OP_REQUIRES(c, seeds_t.dims() == 2 && seeds_t.dim_size(1) == 2 && (!sample || seeds_t.dim_size(0) == batch),
                absl::InvalidArgumentError("seeds must be [B, 2], got " + seeds_t.shape().DebugString()));

    Tensor* labels_t = nullptr;
    Tensor* matched_t = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({batch, num_in}), &labels_t));
    OP_REQUIRES_OK(c, c->allocate_output(1, TensorShape({batch, num_in}), &matched_t));

    const float* gt = gt_t.flat<float>().data();
    const float* sizes = use_sizes ? sizes_t.flat<float>().data() : nullptr;
    const int64_t* seeds = sample ? seeds_t.flat<int64_t>().data() : nullptr;
    const float* anchors = anchors_t.flat<float>().data();
    const float* region = region_t.flat<float>().data();
    int32_t* labels_out = labels_t->flat<int32_t>().data();
    int32_t* matched_out = matched_t->flat<int32_t>().data();

    // Anchors as columns, and their areas (box_area: max(h, 0) * max(w, 0)).
    // Scratch buffers kept per thread (tf.data's map threads live long): no allocation, no fresh pages per call.
    thread_local std::vector<float> ay1, ax1, ay2, ax2, aarea, best, iou_rows, gt_best;
    thread_local std::vector<int32_t> best_index, valid, forced, scratch, keys;
    thread_local std::vector<int64_t> usable;
    for (auto* column : {&ay1, &ax1, &ay2, &ax2, &aarea, &best}) column->resize(num_in);
    for (auto* column : {&best_index, &valid, &forced}) column->resize(num_in);
    keys.resize(sample ? num_in : 0);
    for (int64_t a = 0; a < num_in; ++a) {
      ay1[a] = anchors[4 * a];
      ax1[a] = anchors[4 * a + 1];
      ay2[a] = anchors[4 * a + 2];
      ax2[a] = anchors[4 * a + 3];
      aarea[a] = std::max(ay2[a] - ay1[a], 0.0f) * std::max(ax2[a] - ax1[a], 0.0f);
    }

    for (int64_t b = 0; b < batch; ++b) {
      // Anchors of the valid (unpadded) region (AnchorMatcher.inside_valid_region).
      int32_t num_valid = static_cast<int32_t>(num_in);
      if (use_sizes) {
        const float height = sizes[2 * b], width = sizes[2 * b + 1];
        const float height_limit = height + region_border_, width_limit = width + region_border_;
        num_valid = 0;
        for (int64_t a = 0; a < num_in; ++a) {
          const float ry = region[2 * a], rx = region[2 * a + 1];
          const int32_t ok = region_strict_ ? ((ry < height) & (rx < width))
                                            : ((ry <= height_limit) & (rx <= width_limit));
          valid[a] = ok;
          num_valid += ok;
        }
      }
      const bool masked = num_valid != num_in;  // some anchors lie in the padding: their IoU counts as -1
      if (!masked) std::fill(valid.begin(), valid.end(), 1);
      // Usable GT rows (RpnTargetAssigner.usable_gt): finite, positive size, at least min_gt_size on each side.
      usable.clear();
      const float* boxes = gt + b * num_gt * 4;
      for (int64_t g = 0; g < num_gt; ++g) {
        const float* box = boxes + 4 * g;
        const bool finite = std::isfinite(box[0]) && std::isfinite(box[1]) && std::isfinite(box[2]) &&
                            std::isfinite(box[3]);
        if (finite && box[2] > box[0] && box[3] > box[1] && box[2] - box[0] >= min_gt_size_ &&
            box[3] - box[1] >= min_gt_size_) {
          usable.push_back(g);
        }
      }
      const int64_t num_usable = static_cast<int64_t>(usable.size());
      iou_rows.resize(num_usable * num_in);
      gt_best.resize(num_usable);
      std::fill(best.begin(), best.end(), -1.0f);
      std::fill(best_index.begin(), best_index.end(), -1);

      float* __restrict best_p = best.data();
      int32_t* __restrict best_index_p = best_index.data();
      const int32_t* __restrict valid_p = valid.data();
      const float* __restrict ay1_p = ay1.data();
      const float* __restrict ax1_p = ax1.data();
      const float* __restrict ay2_p = ay2.data();
      const float* __restrict ax2_p = ax2.data();
      const float* __restrict aarea_p = aarea.data();
      for (int64_t u = 0; u < num_usable; ++u) {
        const float* box = boxes + 4 * usable[u];
        const float gy1 = box[0], gx1 = box[1], gy2 = box[2], gx2 = box[3];
        const float garea = std::max(gy2 - gy1, 0.0f) * std::max(gx2 - gx1, 0.0f);
        float* __restrict row = iou_rows.data() + u * num_in;
        // iou_matrix: divide_no_nan(inter, (area_gt + area_anchor) - inter). The union is 0 only where the
        // intersection is 0 too, so dividing by 1 there gives divide_no_nan's 0 without a branch.
        for (int64_t a = 0; a < num_in; ++a) {
          const float top = gy1 > ay1_p[a] ? gy1 : ay1_p[a];
          const float bottom = gy2 < ay2_p[a] ? gy2 : ay2_p[a];
          const float left = gx1 > ax1_p[a] ? gx1 : ax1_p[a];
          const float right = gx2 < ax2_p[a] ? gx2 : ax2_p[a];
          const float dy = bottom - top, dx = right - left;
          const float inter = (dy > 0.0f ? dy : 0.0f) * (dx > 0.0f ? dx : 0.0f);
          const float uni = (garea + aarea_p[a]) - inter;
          row[a] = inter / (uni == 0.0f ? 1.0f : uni);
        }
        if (masked) {
          for (int64_t a = 0; a < num_in; ++a) row[a] = valid_p[a] ? row[a] : -1.0f;
        }
        // Best GT per anchor: strictly greater, so the first GT of highest IoU wins.
        const int32_t g = static_cast<int32_t>(usable[u]);
        for (int64_t a = 0; a < num_in; ++a) {
          const float v = row[a], old = best_p[a];
          const int32_t better = -static_cast<int32_t>(v > old);  // all ones where v wins
          best_p[a] = v > old ? v : old;
          best_index_p[a] = (g & better) | (best_index_p[a] & ~better);
        }
        gt_best[u] = RowMax(row, num_in);
      }

      // Forced positives: anchors tying a GT box's best IoU (within the relative tolerance), where it is > 0.
      // Masked anchors (IoU -1) never reach a positive threshold.
      std::fill(forced.begin(), forced.end(), 0);
      int32_t* __restrict forced_p = forced.data();
      for (int64_t u = 0; u < num_usable; ++u) {
        if (!(gt_best[u] > 0.0f)) continue;
        const float threshold = gt_best[u] * tie_factor_;
        const float* __restrict row = iou_rows.data() + u * num_in;
        for (int64_t a = 0; a < num_in; ++a) forced_p[a] |= row[a] >= threshold;
      }

      int32_t* __restrict labels = labels_out + b * num_in;
      int32_t* __restrict matched = matched_out + b * num_in;
      int64_t num_positive = 0, num_negative = 0;
      const float negative_iou = negative_iou_, positive_iou = positive_iou_;
      for (int64_t a = 0; a < num_in; ++a) {
        const float max_iou = best_p[a] > 0.0f ? best_p[a] : 0.0f;
        const int32_t keep = valid_p[a];  // anchors of the padding: -1, no GT
        int32_t label = max_iou < negative_iou ? 0 : -1;
        label = (forced_p[a] | static_cast<int32_t>(max_iou >= positive_iou)) ? 1 : label;
        label = keep ? label : -1;
        labels[a] = label;
        matched[a] = (keep & static_cast<int32_t>(best_p[a] >= 0.0f)) ? best_index_p[a] : -1;
        num_positive += label == 1;
        num_negative += label == 0;
      }
      if (!sample || num_in == 0) continue;

      // Balanced sampling (sampling.sample_balanced): at most max_positives positives and num_samples in all,
      // those with the largest keys (keys are distinct).
      SamplingKeys(seeds[2 * b], seeds[2 * b + 1], num_in, keys.data());
      const int32_t* image_keys = keys.data();
      const int64_t k_positive = std::min<int64_t>(max_positives_, num_in);
      int64_t positives_kept = num_positive;
      if (max_positives_ == 0) {
        positives_kept = 0;
        for (int64_t a = 0; a < num_in; ++a) labels[a] = labels[a] == 1 ? -1 : labels[a];
      } else if (num_positive > k_positive) {
        const int32_t threshold = KthLargestKey(image_keys, labels, num_in, 1, k_positive - 1, &scratch);
        positives_kept = 0;
        for (int64_t a = 0; a < num_in; ++a) {
          labels[a] = (labels[a] == 1 && image_keys[a] < threshold) ? -1 : labels[a];
          positives_kept += labels[a] == 1;
        }
      }
      const int64_t wanted = num_samples_ - positives_kept;
      const int64_t top_count = std::min<int64_t>(num_samples_, num_in);
      if (wanted <= 0) {
        for (int64_t a = 0; a < num_in; ++a) labels[a] = labels[a] == 0 ? -1 : labels[a];
        continue;
      }
      const int64_t position = std::min<int64_t>(std::max<int64_t>(wanted - 1, 0), top_count - 1);
      if (num_negative > position) {
        const int32_t threshold = KthLargestKey(image_keys, labels, num_in, 0, position, &scratch);
        for (int64_t a = 0; a < num_in; ++a) {
          labels[a] = (labels[a] == 0 && image_keys[a] < threshold) ? -1 : labels[a];
        }
      }
    }
  }

 private:
  float positive_iou_, negative_iou_, min_gt_size_, tie_factor_, region_border_;
  int num_samples_, max_positives_;
  bool region_strict_;
};

// The inputs RpnTfDenseTargets and RpnTfSparseTargets share: labels_inside and matched_inside [B, A_in] alike,
// anchor_terms and anchor_scales [A, 4] alike, gt_terms [B, G, 4] (inputs 0, 1, 3, 4, 5).
absl::Status CheckTargetInputs(OpKernelContext* c) {
  const Tensor& labels = c->input(0);
  const Tensor& terms = c->input(3);
  const Tensor& gt_terms = c->input(5);
  if (labels.dims() != 2 || c->input(1).shape() != labels.shape()) {
    return absl::InvalidArgumentError("labels_inside and matched_inside must be [B, A_in] alike");
  }
  if (terms.dims() != 2 || terms.dim_size(1) != 4 || c->input(4).shape() != terms.shape()) {
    return absl::InvalidArgumentError("anchor_terms and anchor_scales must be [A, 4]");
  }
  if (gt_terms.dims() != 3 || gt_terms.dim_size(0) != labels.dim_size(0) || gt_terms.dim_size(2) != 4) {
    return absl::InvalidArgumentError("gt_terms must be [B, G, 4]");
  }
  return absl::OkStatus();
}

class DenseTargetsOp : public OpKernel {
 public:
  explicit DenseTargetsOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* c) override {
    OP_REQUIRES_OK(c, CheckTargetInputs(c));
    const Tensor& labels_t = c->input(0);
    const Tensor& matched_t = c->input(1);
    const Tensor& inverse_t = c->input(2);
    const Tensor& terms_t = c->input(3);
    const Tensor& scales_t = c->input(4);
    const Tensor& gt_terms_t = c->input(5);
    const int64_t batch = labels_t.dim_size(0), num_in = labels_t.dim_size(1);
    OP_REQUIRES(c, inverse_t.dims() == 1, absl::InvalidArgumentError("inverse_index must be [A]"));
    const int64_t num_anchors = inverse_t.dim_size(0);
    OP_REQUIRES(c, terms_t.dim_size(0) == num_anchors, absl::InvalidArgumentError("anchor_terms must be [A, 4]"));
    const int64_t num_gt = gt_terms_t.dim_size(1);

    Tensor* out_labels_t = nullptr;
    Tensor* deltas_t = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({batch, num_anchors}), &out_labels_t));
    OP_REQUIRES_OK(c, c->allocate_output(1, TensorShape({batch, num_anchors, 4}), &deltas_t));
    const int32_t* labels_in = labels_t.flat<int32_t>().data();
    const int32_t* matched_in = matched_t.flat<int32_t>().data();
    const int32_t* inverse = inverse_t.flat<int32_t>().data();
    const float* terms = terms_t.flat<float>().data();
    const float* scales = scales_t.flat<float>().data();
    const float* gt_terms = gt_terms_t.flat<float>().data();
    int32_t* out_labels = out_labels_t->flat<int32_t>().data();
    float* deltas = deltas_t->flat<float>().data();

    int32_t inverse_min = 0, inverse_max = 0;
    for (int64_t a = 0; a < num_anchors; ++a) {
      inverse_min = inverse[a] < inverse_min ? inverse[a] : inverse_min;
      inverse_max = inverse[a] > inverse_max ? inverse[a] : inverse_max;
    }
    OP_REQUIRES(c, inverse_min >= 0 && inverse_max <= num_in,
                absl::InvalidArgumentError("inverse_index out of range"));
    int32_t matched_max = -1, matched_min = -1;
    for (int64_t i = 0; i < batch * num_in; ++i) {
      matched_max = matched_in[i] > matched_max ? matched_in[i] : matched_max;
      matched_min = matched_in[i] < matched_min ? matched_in[i] : matched_min;
    }
    OP_REQUIRES(c, matched_max < num_gt && matched_min >= -1,
                absl::InvalidArgumentError("matched_inside index out of range"));

    // Per image: the inside values with one spare slot for the outside anchors (inverse index A_in), so that every
    // anchor is one indexed read. An unmatched anchor reads its own terms: (t - t) * s, exact zeros, as the
    // TensorFlow path computes them.
    thread_local std::vector<int32_t> label_slots, gt_slots;
    label_slots.resize(num_in + 1);
    gt_slots.resize(num_in + 1);
    for (int64_t b = 0; b < batch; ++b) {
      const int32_t* labels = labels_in + b * num_in;
      const int32_t* matched = matched_in + b * num_in;
      const float* image_gt_terms = gt_terms + b * num_gt * 4;
      std::copy(labels, labels + num_in, label_slots.begin());
      std::copy(matched, matched + num_in, gt_slots.begin());
      label_slots[num_in] = -1;
      gt_slots[num_in] = -1;
      int32_t* __restrict image_labels = out_labels + b * num_anchors;
      float* __restrict image_deltas = deltas + b * num_anchors * 4;
      const int32_t* __restrict label_p = label_slots.data();
      for (int64_t a = 0; a < num_anchors; ++a) image_labels[a] = label_p[inverse[a]];
      // Each anchor's target terms (its GT's, or its own), then (target - own) * scale in one vector pass.
      for (int64_t a = 0; a < num_anchors; ++a) {
        const int32_t g = gt_slots[inverse[a]];
        const float* target = g >= 0 ? image_gt_terms + 4 * g : terms + 4 * a;
        std::memcpy(image_deltas + 4 * a, target, 4 * sizeof(float));
      }
      const float* __restrict terms_p = terms;
      const float* __restrict scales_p = scales;
      for (int64_t j = 0; j < num_anchors * 4; ++j) image_deltas[j] = (image_deltas[j] - terms_p[j]) * scales_p[j];
    }
  }
};

// The sparse format (RpnTargetAssigner._sparse): the first `size` sampled anchors in anchor order, with their labels and
// deltas (zeros for an anchor without GT); -1 / zeros past the sample.
class SparseTargetsOp : public OpKernel {
 public:
  explicit SparseTargetsOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("size", &size_));
    OP_REQUIRES(c, size_ >= 0, absl::InvalidArgumentError("size must be >= 0"));
  }

  void Compute(OpKernelContext* c) override {
    OP_REQUIRES_OK(c, CheckTargetInputs(c));
    const Tensor& labels_t = c->input(0);
    const Tensor& matched_t = c->input(1);
    const Tensor& inside_t = c->input(2);
    const Tensor& terms_t = c->input(3);
    const Tensor& scales_t = c->input(4);
    const Tensor& gt_terms_t = c->input(5);
    const int64_t batch = labels_t.dim_size(0), num_in = labels_t.dim_size(1);
    OP_REQUIRES(c, inside_t.dims() == 1 && inside_t.dim_size(0) == num_in,
                absl::InvalidArgumentError("inside_index must be [A_in]"));
    const int64_t num_anchors = terms_t.dim_size(0);
    const int64_t num_gt = gt_terms_t.dim_size(1);
    const int32_t* labels_in = labels_t.flat<int32_t>().data();
    const int32_t* matched_in = matched_t.flat<int32_t>().data();
    const int32_t* inside = inside_t.flat<int32_t>().data();
    const float* terms = terms_t.flat<float>().data();
    const float* scales = scales_t.flat<float>().data();
    const float* gt_terms = gt_terms_t.flat<float>().data();
    for (int64_t i = 0; i < num_in; ++i) {
      OP_REQUIRES(c, inside[i] >= 0 && inside[i] < num_anchors,
                  absl::InvalidArgumentError("inside_index out of range"));
    }
    Tensor *indices_t = nullptr, *out_labels_t = nullptr, *deltas_t = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({batch, size_}), &indices_t));
    OP_REQUIRES_OK(c, c->allocate_output(1, TensorShape({batch, size_}), &out_labels_t));
    OP_REQUIRES_OK(c, c->allocate_output(2, TensorShape({batch, size_, 4}), &deltas_t));
    int32_t* indices = indices_t->flat<int32_t>().data();
    int32_t* out_labels = out_labels_t->flat<int32_t>().data();
    float* deltas = deltas_t->flat<float>().data();
    std::fill(indices, indices + batch * size_, -1);
    std::fill(out_labels, out_labels + batch * size_, -1);
    std::fill(deltas, deltas + batch * size_ * 4, 0.0f);
    for (int64_t b = 0; b < batch; ++b) {
      const int32_t* labels = labels_in + b * num_in;
      const int32_t* matched = matched_in + b * num_in;
      int64_t count = 0;
      for (int64_t i = 0; i < num_in && count < size_; ++i) {
        if (labels[i] < 0) continue;
        const int32_t g = matched[i];
        OP_REQUIRES(c, g < num_gt, absl::InvalidArgumentError("matched_inside index out of range"));
        const int32_t a = inside[i];
        const int64_t slot = b * size_ + count;
        indices[slot] = a;
        out_labels[slot] = labels[i];
        if (g >= 0) {
          const float* target = gt_terms + (b * num_gt + g) * 4;
          for (int j = 0; j < 4; ++j) deltas[4 * slot + j] = (target[j] - terms[4 * a + j]) * scales[4 * a + j];
        }
        ++count;
      }
    }
  }

 private:
  int64_t size_;
};

REGISTER_KERNEL_BUILDER(Name("RpnTfSparseTargets").Device(DEVICE_CPU), SparseTargetsOp);
REGISTER_KERNEL_BUILDER(Name("RpnTfLabelAndSample").Device(DEVICE_CPU), LabelAndSampleOp);
REGISTER_KERNEL_BUILDER(Name("RpnTfDenseTargets").Device(DEVICE_CPU), DenseTargetsOp);

}  // namespace rpn_tf_native
