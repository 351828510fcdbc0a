// Command-line values for the C++ programs: whole numbers and label lists checked in one sentence
// (std::stoi's bare "stoi" exception says neither which flag nor what was wrong).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd {

// A whole number from `lo` to `hi` (digits with an optional leading '-'), or an error naming `flag`.
inline long long parse_whole(const std::string& flag, const std::string& text, long long lo, long long hi) {
  const std::string range = " takes a whole number from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got '" + text + "'";
  size_t start = (!text.empty() && text[0] == '-') ? 1 : 0;
  if (text.size() == start || text.size() > 19 + start) throw std::runtime_error(flag + range);
  for (size_t i = start; i < text.size(); ++i)
    if (text[i] < '0' || text[i] > '9') throw std::runtime_error(flag + range);
  const long long v = std::stoll(text);
  if (v < lo || v > hi) throw std::runtime_error(flag + range);
  return v;
}

// An unsigned 64-bit seed (digits only).
inline uint64_t parse_seed(const std::string& flag, const std::string& text) {
  const std::string what = flag + " takes a whole number from 0 to 18446744073709551615, got '" + text + "'";
  if (text.empty() || text.size() > 20) throw std::runtime_error(what);
  for (char c : text)
    if (c < '0' || c > '9') throw std::runtime_error(what);
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    throw std::runtime_error(what);
  }
}

// "0,1,2" -> {0, 1, 2}; an empty entry or anything but class ids is one sentence.
inline std::vector<int64_t> parse_labels(const std::string& text) {
  const std::string what = "--labels takes comma-separated class ids like 0,1,2; got '" + text + "'";
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    try {
      out.push_back(parse_whole("--labels", part, 0, 1 << 20));
    } catch (const std::runtime_error&) {
      throw std::runtime_error(what);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// A finite number.
inline float parse_number(const std::string& flag, const std::string& text) {
  size_t used = 0;
  float v = 0.0f;
  try {
    v = std::stof(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !(v == v) || v > 3.0e38f || v < -3.0e38f)
    throw std::runtime_error(flag + " takes a finite number, got '" + text + "'");
  return v;
}

}  // namespace sd
