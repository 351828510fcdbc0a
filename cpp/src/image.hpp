// Samples in [-1, 1] -> binary PGM (1 channel) or PPM (3 channels), the same uint8 mapping as
// sparse_deploy.sampling.to_uint8: round((clamp(x, -1, 1) + 1) * 127.5).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd {

inline uint8_t to_uint8(float v) {
  const float c = std::min(1.0f, std::max(-1.0f, v));
  return static_cast<uint8_t>(std::nearbyint((c + 1.0f) * 127.5f));
}

// One image of `channels` x h x w (CHW) starting at `data`; 1 channel -> PGM, 3 -> PPM, others:
// the first channel as PGM. Returns the path written.
inline std::string write_image(const std::string& stem, const float* data, int channels, int h, int w) {
  const bool rgb = channels == 3;
  const std::string path = stem + (rgb ? ".ppm" : ".pgm");
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  out << (rgb ? "P6" : "P5") << "\n" << w << " " << h << "\n255\n";
  const size_t plane = static_cast<size_t>(h) * w;
  std::vector<uint8_t> row;
  for (int y = 0; y < h; ++y) {
    row.clear();
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      if (rgb) {
        for (int c = 0; c < 3; ++c) row.push_back(to_uint8(data[c * plane + i]));
      } else {
        row.push_back(to_uint8(data[i]));
      }
    }
    out.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(row.size()));
  }
  return path;
}

}  // namespace sd
