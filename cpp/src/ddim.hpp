// DDIM sampling for a class-conditional denoiser, matching sparse_deploy.sampling.sample with
// scheduler "ddim": diffusers' DDIMScheduler over the model's schedule as the engine manifest
// records it (alphas_cumprod, timestep spacing, steps offset, prediction type, clipping), eta 0,
// init_noise_sigma 1, classifier-free guidance on the first C output channels. Without a recorded
// schedule: DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", set_alpha_to_one=False,
// clip_sample=False), "leading" spacing, steps_offset 0.
// Pure C++ (no TensorRT, no CUDA): the denoiser is a callback.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd {

struct DdimSchedule {
  std::vector<float> alphas_cumprod;  // [num_train_timesteps]
  std::vector<int64_t> timesteps;     // descending, one per sampling step
  float final_alpha_cumprod = 1.0f;   // alphas_cumprod[0] with set_alpha_to_one=False
  int step_ratio = 1;                 // t_prev = t - step_ratio (diffusers: T // steps)
  std::string prediction_type = "epsilon";  // epsilon | v_prediction | sample
  bool clip_sample = false;
  float clip_sample_range = 1.0f;
};

// The model's noise schedule as an engine manifest records it ("schedule", written by
// sparse_deploy.schedule.schedule_record): alphas_cumprod spelled out, so any beta schedule works.
struct ScheduleSpec {
  std::vector<float> alphas_cumprod;
  float final_alpha_cumprod = 1.0f;
  int steps_offset = 0;
  std::string timestep_spacing = "leading";  // leading | trailing | linspace
  std::string prediction_type = "epsilon";
  bool clip_sample = false;
  float clip_sample_range = 1.0f;
};

// DDIM timesteps for `steps` steps over spec.alphas_cumprod, as diffusers' DDIMScheduler.set_timesteps.
inline DdimSchedule make_ddim_schedule(const ScheduleSpec& spec, int steps) {
  const int train_timesteps = static_cast<int>(spec.alphas_cumprod.size());
  if (train_timesteps < 1) throw std::invalid_argument("the schedule has no alphas_cumprod");
  if (steps < 1 || steps > train_timesteps)
    throw std::invalid_argument("steps must be between 1 and " + std::to_string(train_timesteps));
  if (spec.prediction_type != "epsilon" && spec.prediction_type != "v_prediction" && spec.prediction_type != "sample")
    throw std::invalid_argument("prediction_type '" + spec.prediction_type + "' is not supported");
  DdimSchedule s;
  s.alphas_cumprod = spec.alphas_cumprod;
  s.final_alpha_cumprod = spec.final_alpha_cumprod;
  s.prediction_type = spec.prediction_type;
  s.clip_sample = spec.clip_sample;
  s.clip_sample_range = spec.clip_sample_range;
  s.step_ratio = train_timesteps / steps;
  if (spec.timestep_spacing == "leading") {
    for (int i = steps - 1; i >= 0; --i) s.timesteps.push_back(static_cast<int64_t>(i) * s.step_ratio + spec.steps_offset);
  } else if (spec.timestep_spacing == "trailing") {
    const double ratio = static_cast<double>(train_timesteps) / steps;
    for (double t = train_timesteps; t > 0; t -= ratio) s.timesteps.push_back(static_cast<int64_t>(std::nearbyint(t)) - 1);
  } else if (spec.timestep_spacing == "linspace") {
    for (int i = steps - 1; i >= 0; --i) {
      const double t = steps == 1 ? 0.0 : static_cast<double>(i) * (train_timesteps - 1) / (steps - 1);
      s.timesteps.push_back(static_cast<int64_t>(std::nearbyint(t)));
    }
  } else {
    throw std::invalid_argument("timestep_spacing '" + spec.timestep_spacing + "' is not supported");
  }
  return s;
}

// Linear betas from beta_start to beta_end (float32, like torch.linspace), their cumulative
// product of (1 - beta), and the "leading" timesteps t_i = i * (T / steps), descending: the
// default schedule, for manifests that record none.
inline DdimSchedule make_ddim_schedule(int steps, int train_timesteps = 1000, float beta_start = 1e-4f, float beta_end = 0.02f) {
  if (steps < 1 || steps > train_timesteps)
    throw std::invalid_argument("steps must be between 1 and " + std::to_string(train_timesteps));
  ScheduleSpec spec;
  spec.alphas_cumprod.resize(train_timesteps);
  const float step = (beta_end - beta_start) / static_cast<float>(train_timesteps - 1);
  const int half = train_timesteps / 2;
  double acc = 1.0;  // torch.cumprod accumulates float32 in double on the CPU
  for (int i = 0; i < train_timesteps; ++i) {
    // torch.linspace fills the first half from the start and the second half from the end.
    const float beta = i < half ? beta_start + step * static_cast<float>(i)
                                : beta_end - step * static_cast<float>(train_timesteps - 1 - i);
    acc *= static_cast<double>(1.0f - beta);
    spec.alphas_cumprod[i] = static_cast<float>(acc);
  }
  spec.final_alpha_cumprod = spec.alphas_cumprod[0];
  return make_ddim_schedule(spec, steps);
}

// One deterministic DDIM step (eta = 0) on a whole batch, in place: x <- x_{t-ratio}.
// `out` is the model's prediction (epsilon, v or x0, as the schedule's prediction_type says).
inline void ddim_step(const DdimSchedule& s, int64_t t, const std::vector<float>& out, std::vector<float>& x) {
  const int64_t prev = t - s.step_ratio;
  const float a_t = s.alphas_cumprod.at(static_cast<size_t>(t));
  const float a_prev = prev >= 0 ? s.alphas_cumprod.at(static_cast<size_t>(prev)) : s.final_alpha_cumprod;
  const float sqrt_a_t = std::sqrt(a_t), sqrt_b_t = std::sqrt(1.0f - a_t);
  const float sqrt_a_prev = std::sqrt(a_prev), sqrt_b_prev = std::sqrt(1.0f - a_prev);
  const int kind = s.prediction_type == "epsilon" ? 0 : s.prediction_type == "sample" ? 1 : 2;
  for (size_t i = 0; i < x.size(); ++i) {
    float x0, eps;
    if (kind == 0) {
      x0 = (x[i] - sqrt_b_t * out[i]) / sqrt_a_t;
      eps = out[i];
    } else if (kind == 1) {
      x0 = out[i];
      eps = (x[i] - sqrt_a_t * x0) / sqrt_b_t;
    } else {
      x0 = sqrt_a_t * x[i] - sqrt_b_t * out[i];
      eps = sqrt_a_t * out[i] + sqrt_b_t * x[i];
    }
    if (s.clip_sample) x0 = std::min(std::max(x0, -s.clip_sample_range), s.clip_sample_range);
    x[i] = sqrt_a_prev * x0 + sqrt_b_prev * eps;
  }
}

// denoise(sample [B*C*H*W], timestep [B], labels [B], batch B) -> output [B*C_out*H*W] (float32).
using DenoiseFn = std::function<std::vector<float>(const std::vector<float>&, const std::vector<int64_t>&,
                                                   const std::vector<int64_t>&, int)>;

struct SampleShape {
  int channels = 1;      // C of the sample
  int out_channels = 1;  // C' of the output (2C when the model learns sigma)
  int height = 1, width = 1;
  int64_t null_label = 0;  // num_classes: the "no class" label for guidance
};

// The full loop for `n` images starting from `noise` ([n*C*H*W]); returns the samples.
inline std::vector<float> ddim_sample(const DenoiseFn& denoise, const SampleShape& shape, const DdimSchedule& sched,
                                      std::vector<float> noise, const std::vector<int64_t>& labels, float guidance) {
  const int n = static_cast<int>(labels.size());
  const size_t per = static_cast<size_t>(shape.channels) * shape.height * shape.width;
  const size_t per_out = static_cast<size_t>(shape.out_channels) * shape.height * shape.width;
  if (noise.size() != n * per) throw std::invalid_argument("noise has the wrong size for the batch");
  const bool cfg = guidance != 1.0f;
  std::vector<float> x = std::move(noise), eps(n * per);
  std::vector<int64_t> y = labels;
  if (cfg) y.insert(y.end(), labels.size(), shape.null_label);
  const int rows = cfg ? 2 * n : n;
  for (int64_t t : sched.timesteps) {
    std::vector<float> x_in = x;
    if (cfg) x_in.insert(x_in.end(), x.begin(), x.end());
    std::vector<int64_t> t_in(rows, t);
    std::vector<float> out = denoise(x_in, t_in, y, rows);
    if (out.size() != rows * per_out) throw std::runtime_error("denoiser output has the wrong size");
    for (int b = 0; b < n; ++b) {
      for (size_t j = 0; j < per; ++j) {  // first C channels = epsilon
        const float cond = out[b * per_out + j];
        if (cfg) {
          const float uncond = out[(n + b) * per_out + j];
          eps[b * per + j] = uncond + guidance * (cond - uncond);
        } else {
          eps[b * per + j] = cond;
        }
      }
    }
    ddim_step(sched, t, eps, x);
  }
  return x;
}

// IEEE 754 binary16 <-> float32 on the host (round to nearest even), for fp16 engines.
inline uint16_t float_to_half(float value) {
  uint32_t f;
  std::memcpy(&f, &value, sizeof f);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((f >> 23) & 0xFF) - 127 + 15;
  uint32_t mant = f & 0x7FFFFFu;
  if (((f >> 23) & 0xFF) == 0xFF) return static_cast<uint16_t>(sign | 0x7C00u | (mant ? 0x200u : 0u));  // inf/nan
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7C00u);                                            // overflow
  if (exp <= 0) {                                                                                         // subnormal
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // may carry into the exponent: correct
  return static_cast<uint16_t>(half);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, f;
  if (exp == 0) {
    if (mant == 0) {
      f = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) { mant <<= 1; --exp; }
      f = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    f = sign | 0x7F800000u | (mant << 13);
  } else {
    f = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &f, sizeof out);
  return out;
}

}  // namespace sd
