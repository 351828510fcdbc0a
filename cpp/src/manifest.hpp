// The engine manifest written by `python -m sparse_deploy.build` (format sparse-deploy-engine/1;
// sparse_deploy/artifacts.py owns it): which file, which backend, the I/O contract (precision,
// names, dtypes, shapes with -1 for the batch axis, the min/opt/max batch profile) and, for
// TensorRT, the GPU and TensorRT version it was built for.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ddim.hpp"
#include "json.hpp"
#include "sha256.hpp"

namespace sd {

struct TensorSpec {
  std::string name;
  std::string dtype;           // numpy name: float32 | float16 | int64
  std::vector<int64_t> shape;  // -1 = batch
};

struct Manifest {
  std::string format, backend, engine, kind, precision, preset;
  std::string compute_capability, tensorrt_version, gpu;
  std::vector<TensorSpec> inputs, outputs;
  int profile_min = 1, profile_opt = 1, profile_max = 1;
  long long num_classes = -1;  // from the manifest when present (-1: unknown)
  bool has_schedule = false;    // the manifest records the model's noise schedule
  ScheduleSpec schedule;

  const TensorSpec* input(const std::string& name) const {
    for (const auto& t : inputs)
      if (t.name == name) return &t;
    return nullptr;
  }
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The key holding a manifest's seal: sha256 of its canonical JSON without this key (sparse_deploy/provenance.py).
constexpr const char* kSealKey = "manifest_sha256";
constexpr long long kMaxDim = 1 << 20;  // any dimension or batch a manifest may state

// Why a manifest's seal does not hold (empty when it does), as Python's provenance.seal_problem(required=True).
inline std::string seal_problem(const Json& j) {
  if (!j.contains(kSealKey) || !j[kSealKey].is_string())
    return std::string("it carries no seal (") + kSealKey + ": written by hand or by an older version)";
  if (sha256_hex(j.canonical(kSealKey)) != j[kSealKey].str()) return "its content does not match its own hash (edited by hand or damaged)";
  return "";
}

inline long long bounded(const Json& v, long long lo, long long hi, const std::string& what) {
  const long long x = v.integer();
  if (x < lo || x > hi) throw std::runtime_error(what + " is " + std::to_string(x) + ", outside " + std::to_string(lo) + ".." + std::to_string(hi));
  return x;
}

inline std::vector<TensorSpec> read_specs(const Json& list) {
  std::vector<TensorSpec> out;
  for (const Json& t : list.items()) {
    TensorSpec spec{t["name"].str(), t["dtype"].str(), {}};
    for (const Json& d : t["shape"].items()) spec.shape.push_back(bounded(d, -1, kMaxDim, "a dimension of '" + spec.name + "'"));
    out.push_back(spec);
  }
  return out;
}

inline void read_fields(const Json& j, const std::string& where, Manifest& m);

// Parse and check a manifest (format, seal, fields); throws std::runtime_error with a sentence saying what is wrong.
inline Manifest parse_manifest(const std::string& text, const std::string& where) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + where + "' is not valid JSON (" + e.what() + "); rebuild the engine with make engine");
  }
  if (!j.is_object() || !j.contains("format") || !j["format"].is_string() || j["format"].str() != "sparse-deploy-engine/1")
    throw std::runtime_error("'" + where + "' is not a sparse-deploy engine manifest (format sparse-deploy-engine/1 expected)");
  const std::string problem = seal_problem(j);
  if (!problem.empty()) throw std::runtime_error("engine manifest '" + where + "': " + problem + "; rebuild the engine with make engine");
  Manifest m;
  try {
    read_fields(j, where, m);
  } catch (const std::runtime_error& e) {  // a sealed manifest of the right format, but not the shape this reader knows
    const std::string what = e.what();
    if (what.rfind("manifest '", 0) == 0) throw;
    throw std::runtime_error("manifest '" + where + "' is malformed (" + what + "); rebuild the engine with make engine");
  }
  return m;
}

inline void read_fields(const Json& j, const std::string& where, Manifest& m) {
  m.format = j.get_string("format");
  m.backend = j.get_string("backend");
  m.engine = j.get_string("engine");
  m.kind = j.get_string("kind");
  m.preset = j.get_string("preset");
  m.compute_capability = j.get_string("compute_capability");
  m.tensorrt_version = j.get_string("tensorrt_version");
  m.gpu = j.get_string("gpu");
  // Classes come from the model's own record (the preset spec every engine manifest carries), not a
  // table of preset names kept here.
  if (j.contains("num_classes") && j["num_classes"].is_number()) m.num_classes = bounded(j["num_classes"], 0, kMaxDim, "num_classes");
  else if (j.contains("preset_spec") && j["preset_spec"].is_object() && j["preset_spec"].contains("num_classes") &&
           j["preset_spec"]["num_classes"].is_number())
    m.num_classes = bounded(j["preset_spec"]["num_classes"], 0, kMaxDim, "num_classes");
  if (j.contains("schedule") && j["schedule"].is_object() && j["schedule"].contains("alphas_cumprod")) {
    const Json& s = j["schedule"];
    for (const Json& a : s["alphas_cumprod"].items()) m.schedule.alphas_cumprod.push_back(static_cast<float>(a.num()));
    m.schedule.final_alpha_cumprod = static_cast<float>(s["final_alpha_cumprod"].num());
    m.schedule.steps_offset = s.contains("steps_offset") ? static_cast<int>(s["steps_offset"].integer()) : 0;
    m.schedule.timestep_spacing = s.get_string("timestep_spacing", "leading");
    m.schedule.prediction_type = s.get_string("prediction_type", "epsilon");
    m.schedule.clip_sample = s.contains("clip_sample") && s["clip_sample"].boolean();
    if (s.contains("clip_sample_range") && s["clip_sample_range"].is_number())
      m.schedule.clip_sample_range = static_cast<float>(s["clip_sample_range"].num());
    m.has_schedule = true;
  }
  if (!j.contains("contract")) throw std::runtime_error("manifest '" + where + "' has no contract; rebuild the engine");
  const Json& c = j["contract"];
  // The precision is the contract's; manifests written before that kept a top-level copy.
  m.precision = c.get_string("precision", j.get_string("precision"));
  m.inputs = read_specs(c["inputs"]);
  m.outputs = read_specs(c["outputs"]);
  m.profile_min = static_cast<int>(bounded(c["profile"]["min"], 1, kMaxDim, "the profile's min"));
  m.profile_opt = static_cast<int>(bounded(c["profile"]["opt"], m.profile_min, kMaxDim, "the profile's opt"));
  m.profile_max = static_cast<int>(bounded(c["profile"]["max"], m.profile_opt, kMaxDim, "the profile's max"));
  const TensorSpec* sample = m.input("sample");
  if (!sample || sample->shape.size() != 4 || !m.input("timestep") || m.outputs.size() != 1 || m.outputs[0].shape.size() != 4)
    throw std::runtime_error("manifest '" + where + "' does not describe a denoiser (sample [B,C,H,W], timestep [B] -> out [B,C',H,W])");
}

}  // namespace sd
