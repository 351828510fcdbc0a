// ddim_selftest: the TensorRT-free parts of the C++ runner, checked from Python
// (tests/unit/test_cpp.py): the manifest reader, fp16 conversions, and the DDIM loop with an
// analytic stand-in denoiser, eps = 0.1 x + 0.01 (label - 5) + 1e-4 t, against sampling.sample.
//
//   ddim_selftest manifest PATH
//   ddim_selftest sample --noise FILE.f32 --labels 1,7 --steps 10 --guidance 2 --channels 1 --size 16
//                        --null-label 10 --out FILE.f32 [--manifest ENGINE.json]   (all on one line;
//                        with --manifest, the schedule that manifest records)
//   ddim_selftest half
//   ddim_selftest labels TEXT        (the runner's --labels parser: one id a line, or one error line)
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "ddim.hpp"
#include "manifest.hpp"

namespace {

int manifest_mode(const std::string& path) {
  const sd::Manifest m = sd::parse_manifest(sd::read_file(path), path);
  std::cout << "format " << m.format << "\nbackend " << m.backend << "\nengine " << m.engine << "\npreset " << m.preset
            << "\nprecision " << m.precision << "\nclasses " << m.num_classes << "\nprofile " << m.profile_min << " " << m.profile_opt << " " << m.profile_max << "\n";
  for (const auto* list : {&m.inputs, &m.outputs}) {
    for (const auto& t : *list) {
      std::cout << (list == &m.inputs ? "input " : "output ") << t.name << " " << t.dtype;
      for (auto d : t.shape) std::cout << " " << d;
      std::cout << "\n";
    }
  }
  return 0;
}

int half_mode() {
  const float values[] = {0.0f, 1.0f, -2.5f, 65504.0f, 1e-5f, 0.1f, 3.14159f, -7e-8f};
  for (float v : values) {
    const float back = sd::half_to_float(sd::float_to_half(v));
    std::cout << v << " " << back << "\n";
  }
  return 0;
}

int sample_mode(int argc, char** argv) {
  std::string noise_path, out_path, manifest_path;
  std::vector<int64_t> labels;
  int steps = 10, channels = 1, size = 16;
  float guidance = 1.0f;
  int64_t null_label = 10;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--noise") noise_path = v;
    else if (k == "--out") out_path = v;
    else if (k == "--manifest") manifest_path = v;
    else if (k == "--steps") steps = static_cast<int>(sd::parse_whole(k, v, 1, 100000));
    else if (k == "--channels") channels = static_cast<int>(sd::parse_whole(k, v, 1, 64));
    else if (k == "--size") size = static_cast<int>(sd::parse_whole(k, v, 1, 4096));
    else if (k == "--guidance") guidance = sd::parse_number(k, v);
    else if (k == "--null-label") null_label = sd::parse_whole(k, v, 0, 1 << 20);
    else if (k == "--labels") labels = sd::parse_labels(v);
    else throw std::runtime_error("unknown argument " + k);
  }
  sd::SampleShape shape{channels, channels, size, size, null_label};
  const size_t per = static_cast<size_t>(channels) * size * size;
  const std::string raw = sd::read_file(noise_path);
  std::vector<float> noise(raw.size() / sizeof(float));
  std::memcpy(noise.data(), raw.data(), raw.size());
  auto fake = [&](const std::vector<float>& x, const std::vector<int64_t>& t, const std::vector<int64_t>& y, int batch) {
    std::vector<float> out(x.size());
    for (int b = 0; b < batch; ++b)
      for (size_t j = 0; j < per; ++j)
        out[b * per + j] = 0.1f * x[b * per + j] + 0.01f * static_cast<float>(y[b] - 5) + 1e-4f * static_cast<float>(t[b]);
    return out;
  };
  sd::DdimSchedule sched;
  if (!manifest_path.empty()) {  // the schedule an engine manifest records
    const sd::Manifest m = sd::parse_manifest(sd::read_file(manifest_path), manifest_path);
    if (!m.has_schedule) throw std::runtime_error("manifest '" + manifest_path + "' records no schedule");
    sched = sd::make_ddim_schedule(m.schedule, steps);
  } else {
    sched = sd::make_ddim_schedule(steps);
  }
  const std::vector<float> x = sd::ddim_sample(fake, shape, sched, noise, labels, guidance);
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(x.data()), static_cast<std::streamsize>(x.size() * sizeof(float)));
  std::cout << "timesteps";
  for (auto t : sched.timesteps) std::cout << " " << t;
  std::cout << "\nalphas_cumprod_0 " << sched.alphas_cumprod[0] << "\nalphas_cumprod_last " << sched.alphas_cumprod.back() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "manifest" && argc > 2) return manifest_mode(argv[2]);
    if (mode == "half") return half_mode();
    if (mode == "labels" && argc > 2) {
      for (auto label : sd::parse_labels(argv[2])) std::cout << label << "\n";
      return 0;
    }
    if (mode == "sample") return sample_mode(argc, argv);
    std::cerr << "usage: ddim_selftest manifest PATH | half | sample --noise F --labels L --steps S --guidance G ... --out F\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
