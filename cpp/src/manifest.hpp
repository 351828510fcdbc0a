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

inline std::vector<TensorSpec> read_specs(const Json& list) {
  std::vector<TensorSpec> out;
  for (const Json& t : list.items()) {
    TensorSpec spec{t["name"].str(), t["dtype"].str(), {}};
    for (const Json& d : t["shape"].items()) spec.shape.push_back(d.integer());
    out.push_back(spec);
  }
  return out;
}

// Parse and check a manifest; throws std::runtime_error with a sentence saying what is wrong.
inline Manifest parse_manifest(const std::string& text, const std::string& where) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + where + "' is not valid JSON (" + e.what() + "); rebuild the engine with make engine");
  }
  if (!j.is_object() || j.get_string("format") != "sparse-deploy-engine/1")
    throw std::runtime_error("'" + where + "' is not a sparse-deploy engine manifest (format sparse-deploy-engine/1 expected)");
  Manifest m;
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
  if (j.contains("num_classes") && j["num_classes"].is_number()) m.num_classes = j["num_classes"].integer();
  else if (j.contains("preset_spec") && j["preset_spec"].is_object() && j["preset_spec"].contains("num_classes") &&
           j["preset_spec"]["num_classes"].is_number())
    m.num_classes = j["preset_spec"]["num_classes"].integer();
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
  m.profile_min = static_cast<int>(c["profile"]["min"].integer());
  m.profile_opt = static_cast<int>(c["profile"]["opt"].integer());
  m.profile_max = static_cast<int>(c["profile"]["max"].integer());
  const TensorSpec* sample = m.input("sample");
  if (!sample || sample->shape.size() != 4 || !m.input("timestep") || m.outputs.size() != 1 || m.outputs[0].shape.size() != 4)
    throw std::runtime_error("manifest '" + where + "' does not describe a denoiser (sample [B,C,H,W], timestep [B] -> out [B,C',H,W])");
  return m;
}

}  // namespace sd
