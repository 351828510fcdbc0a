// sparse_deploy_trt: sample images from a sparse-deploy TensorRT engine in C++.
//
//   sparse_deploy_trt --engine engines/fmnist-dit/sparse-fp16.trt.plan --num 8 --labels 0,1,2,3
//                     --steps 50 --guidance 1 --seed 0 --out cpp-samples   (one line)
//
// Reads the engine manifest beside the plan (<kind>-<precision>.trt.json), refuses a plan built
// for another GPU generation or TensorRT version, checks the engine's I/O tensors against the
// manifest's contract (names, dtypes, non-batch dims), runs the DDIM loop (ddim.hpp) with the
// TensorRT 10+ runtime (IRuntime -> ICudaEngine -> IExecutionContext; setInputShape,
// setTensorAddress, enqueueV3) and writes PGM/PPM images plus the raw float32 samples.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ddim.hpp"
#include "image.hpp"
#include "cli.hpp"
#include "manifest.hpp"

namespace {

#define CUDA_CHECK(call)                                                                          \
  do {                                                                                            \
    cudaError_t err_ = (call);                                                                    \
    if (err_ != cudaSuccess) throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(err_)); \
  } while (0)

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (ptr) CUDA_CHECK(cudaFree(ptr));
    ptr = nullptr;
    CUDA_CHECK(cudaMalloc(&ptr, n));
    bytes = n;
  }
};

std::string dtype_name(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kINT32: return "int32";
    default: return "other";
  }
}

std::string dims_str(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? "," : "") + std::to_string(d.d[i]);
  return s + "]";
}

std::string version_prefix(const std::string& v, int parts) {  // "10.13.0.35" -> "10.13.0"
  std::string out;
  int seen = 0;
  for (char c : v) {
    if (c == '.' && ++seen == parts) break;
    out += c;
  }
  return out;
}

// A TensorRT plan behind the denoiser signature of ddim.hpp (float32 on the host).
class TrtDenoiser {
 public:
  TrtDenoiser(const std::string& plan_path, const sd::Manifest& m) : m_(m) {
    check_compatible();
    const std::string plan = sd::read_file(plan_path);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("could not create the TensorRT runtime");
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw std::runtime_error("TensorRT could not deserialize '" + plan_path + "'; rebuild it on this GPU with make engine");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("could not create a TensorRT execution context");
    check_io();
    CUDA_CHECK(cudaStreamCreate(&stream_));
  }
  ~TrtDenoiser() {
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::vector<float> operator()(const std::vector<float>& x, const std::vector<int64_t>& t, const std::vector<int64_t>& y, int batch) {
    if (batch < m_.profile_min || batch > m_.profile_max)
      throw std::runtime_error("batch " + std::to_string(batch) + " is outside the engine profile [" + std::to_string(m_.profile_min) +
                               ", " + std::to_string(m_.profile_max) + "]");
    const bool fp16 = m_.precision == "fp16";
    const auto& sample = *m_.input("sample");
    nvinfer1::Dims4 sample_dims(batch, sample.shape[1], sample.shape[2], sample.shape[3]);
    nvinfer1::Dims row;
    row.nbDims = 1;
    row.d[0] = batch;
    // Inputs: host data in the contract dtype, copied to the device.
    if (fp16) {
      std::vector<uint16_t> half(x.size());
      for (size_t i = 0; i < x.size(); ++i) half[i] = sd::float_to_half(x[i]);
      upload("sample", half.data(), half.size() * sizeof(uint16_t));
    } else {
      upload("sample", x.data(), x.size() * sizeof(float));
    }
    if (!context_->setInputShape("sample", sample_dims) || !context_->setInputShape("timestep", row))
      throw std::runtime_error("TensorRT refused the input shapes for batch " + std::to_string(batch));
    upload("timestep", t.data(), t.size() * sizeof(int64_t));
    if (m_.input("class_labels")) {
      if (!context_->setInputShape("class_labels", row)) throw std::runtime_error("TensorRT refused the class_labels shape");
      upload("class_labels", y.data(), y.size() * sizeof(int64_t));
    }
    const std::string out_name = m_.outputs[0].name;
    const nvinfer1::Dims out_dims = context_->getTensorShape(out_name.c_str());
    size_t count = 1;
    for (int i = 0; i < out_dims.nbDims; ++i) count *= static_cast<size_t>(out_dims.d[i]);
    DeviceBuffer& out = buffers_[out_name];
    out.reserve(count * (fp16 ? 2 : 4));
    if (!context_->setTensorAddress(out_name.c_str(), out.ptr)) throw std::runtime_error("setTensorAddress failed for " + out_name);
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("TensorRT enqueueV3 failed");
    std::vector<float> result(count);
    if (fp16) {
      std::vector<uint16_t> half(count);
      CUDA_CHECK(cudaMemcpyAsync(half.data(), out.ptr, count * 2, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (size_t i = 0; i < count; ++i) result[i] = sd::half_to_float(half[i]);
    } else {
      CUDA_CHECK(cudaMemcpyAsync(result.data(), out.ptr, count * 4, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    return result;
  }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  sd::Manifest m_;
  std::map<std::string, DeviceBuffer> buffers_;

  void upload(const char* name, const void* host, size_t bytes) {
    DeviceBuffer& buf = buffers_[name];
    buf.reserve(bytes);
    CUDA_CHECK(cudaMemcpyAsync(buf.ptr, host, bytes, cudaMemcpyHostToDevice, stream_));
    if (!context_->setTensorAddress(name, buf.ptr)) throw std::runtime_error(std::string("setTensorAddress failed for ") + name);
  }

  // Plans only run on the GPU generation and TensorRT version they were built with.
  void check_compatible() const {
    int device = 0;
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    const int32_t v = getInferLibVersion();
    const std::string trt = std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
    std::string problems;
    if (!m_.compute_capability.empty() && m_.compute_capability != cc)
      problems += "compute capability " + m_.compute_capability + " (" + m_.gpu + "; this GPU is " + prop.name + ", " + cc + ")";
    if (!m_.tensorrt_version.empty() && version_prefix(m_.tensorrt_version, 3) != trt)
      problems += std::string(problems.empty() ? "" : " and ") + "TensorRT " + m_.tensorrt_version + " (this runtime is " + trt + ")";
    if (!problems.empty())
      throw std::runtime_error("the engine was built for " + problems +
                               "; TensorRT engines only run where they were built: rebuild it here with make engine");
  }

  // Every contract tensor must exist in the engine with the same direction, dtype and non-batch dims.
  void check_io() const {
    std::map<std::string, std::pair<bool, nvinfer1::DataType>> io;
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      io[name] = {engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT, engine_->getTensorDataType(name)};
    }
    auto check = [&](const sd::TensorSpec& spec, bool input) {
      auto it = io.find(spec.name);
      if (it == io.end() || it->second.first != input)
        throw std::runtime_error("the engine has no " + std::string(input ? "input" : "output") + " '" + spec.name + "' but its manifest promises one; rebuild it");
      if (dtype_name(it->second.second) != spec.dtype)
        throw std::runtime_error("engine tensor '" + spec.name + "' is " + dtype_name(it->second.second) + ", the manifest says " + spec.dtype);
      const nvinfer1::Dims d = engine_->getTensorShape(spec.name.c_str());
      bool same = d.nbDims == static_cast<int>(spec.shape.size());
      for (int k = 1; same && k < d.nbDims; ++k) same = d.d[k] == spec.shape[k];
      if (!same) throw std::runtime_error("engine tensor '" + spec.name + "' has shape " + dims_str(d) + ", which does not fit the manifest");
      io.erase(it);
    };
    for (const auto& t : m_.inputs) check(t, true);
    for (const auto& t : m_.outputs) check(t, false);
    if (!io.empty()) throw std::runtime_error("the engine has tensors the manifest does not describe, e.g. '" + io.begin()->first + "'");
  }
};

struct Args {
  std::string engine, manifest, out = "cpp-samples", noise;
  int num = 4, steps = 50;
  float guidance = 1.0f;
  uint64_t seed = 0;
  long long num_classes = -1;
  std::vector<int64_t> labels;
};

void usage() {
  std::cerr << "usage: sparse_deploy_trt --engine PLAN [--manifest JSON] [--num N] [--labels 0,1,..] [--steps S]\n"
               "                         [--guidance G] [--seed K] [--noise FILE.f32] [--num-classes K] [--out DIR]\n";
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--engine") a.engine = next();
    else if (k == "--manifest") a.manifest = next();
    else if (k == "--out") a.out = next();
    else if (k == "--num") a.num = static_cast<int>(sd::parse_whole(k, next(), 1, 65536));
    else if (k == "--steps") a.steps = static_cast<int>(sd::parse_whole(k, next(), 1, 100000));
    else if (k == "--guidance") a.guidance = sd::parse_number(k, next());
    else if (k == "--seed") a.seed = sd::parse_seed(k, next());
    else if (k == "--noise") a.noise = next();
    else if (k == "--num-classes") a.num_classes = sd::parse_whole(k, next(), 0, 1 << 20);
    else if (k == "--labels") a.labels = sd::parse_labels(next());
    else if (k == "--help" || k == "-h") {
      usage();
      std::exit(0);
    } else {
      throw std::runtime_error("unknown argument '" + k + "'");
    }
  }
  if (a.engine.empty()) throw std::runtime_error("--engine is required");
  if (a.num < 1 || a.steps < 1) throw std::runtime_error("--num and --steps must be at least 1");
  if (a.manifest.empty()) {  // x.trt.plan -> x.trt.json
    a.manifest = std::filesystem::path(a.engine).replace_extension(".json").string();
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    const sd::Manifest m = sd::parse_manifest(sd::read_file(args.manifest), args.manifest);
    if (m.backend != "tensorrt")
      throw std::runtime_error("'" + args.engine + "' is a " + m.backend + " engine; this program runs TensorRT plans (*.trt.plan)");
    if (m.engine != std::filesystem::path(args.engine).filename().string())
      throw std::runtime_error("manifest '" + args.manifest + "' describes '" + m.engine + "', not '" + args.engine + "'");

    const auto& sample = *m.input("sample");
    sd::SampleShape shape;
    shape.channels = static_cast<int>(sample.shape[1]);
    shape.height = static_cast<int>(sample.shape[2]);
    shape.width = static_cast<int>(sample.shape[3]);
    shape.out_channels = static_cast<int>(m.outputs[0].shape[1]);
    const bool conditional = m.input("class_labels") != nullptr;
    long long classes = args.num_classes >= 0 ? args.num_classes : m.num_classes;
    if (conditional && classes <= 0)
      throw std::runtime_error("the manifest of preset '" + m.preset + "' records no num_classes (preset_spec): rebuild the engine, "
                               "or pass --num-classes (its null label for guidance)");
    if (!conditional && args.guidance != 1.0f) throw std::runtime_error("guidance needs a class-conditional model");
    shape.null_label = conditional ? classes : 0;

    std::mt19937_64 rng(args.seed);
    std::vector<int64_t> labels(args.num, 0);
    for (int i = 0; i < args.num; ++i) {
      if (!conditional) break;
      labels[i] = args.labels.empty() ? static_cast<int64_t>(rng() % static_cast<uint64_t>(classes)) : args.labels[i % args.labels.size()];
      if (labels[i] < 0 || labels[i] >= classes)
        throw std::runtime_error("class label " + std::to_string(labels[i]) + " is outside 0.." + std::to_string(classes - 1));
    }
    const size_t per = static_cast<size_t>(shape.channels) * shape.height * shape.width;
    std::vector<float> noise(args.num * per);
    if (!args.noise.empty()) {  // e.g. torch.randn from Python, to reproduce its images exactly
      const std::string raw = sd::read_file(args.noise);
      if (raw.size() != noise.size() * sizeof(float))
        throw std::runtime_error("--noise '" + args.noise + "' holds " + std::to_string(raw.size()) + " bytes; expected " +
                                 std::to_string(noise.size() * sizeof(float)) + " (float32 [num, C, H, W])");
      std::memcpy(noise.data(), raw.data(), raw.size());
    } else {
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (float& v : noise) v = normal(rng);
    }

    TrtDenoiser denoiser(args.engine, m);
    // The model's own schedule when the manifest records it, else the default linear one.
    const sd::DdimSchedule sched = m.has_schedule ? sd::make_ddim_schedule(m.schedule, args.steps) : sd::make_ddim_schedule(args.steps);
    const int rows_per_image = args.guidance != 1.0f ? 2 : 1;
    const int chunk = m.profile_max / rows_per_image;
    if (chunk < 1) throw std::runtime_error("the engine's max batch is too small for guidance; rebuild with a larger --max-batch");
    std::vector<float> samples;
    for (int start = 0; start < args.num; start += chunk) {
      const int n = std::min(chunk, args.num - start);
      std::vector<float> x0(noise.begin() + start * per, noise.begin() + (start + n) * per);
      std::vector<int64_t> y(labels.begin() + start, labels.begin() + start + n);
      auto fn = [&](const std::vector<float>& x, const std::vector<int64_t>& t, const std::vector<int64_t>& yy, int b) {
        return denoiser(x, t, yy, b);
      };
      std::vector<float> out = sd::ddim_sample(fn, shape, sched, std::move(x0), y, args.guidance);
      samples.insert(samples.end(), out.begin(), out.end());
    }

    std::filesystem::create_directories(args.out);
    std::ofstream raw(args.out + "/samples.f32", std::ios::binary);
    raw.write(reinterpret_cast<const char*>(samples.data()), static_cast<std::streamsize>(samples.size() * sizeof(float)));
    if (shape.channels != 1 && shape.channels != 3)
      std::cerr << "note: " << shape.channels << "-channel samples (latents?) are written as their first channel; no VAE in C++\n";
    for (int i = 0; i < args.num; ++i) {
      char stem[64];
      std::snprintf(stem, sizeof stem, "/sample-%04d", i);
      sd::write_image(args.out + stem, samples.data() + i * per, shape.channels, shape.height, shape.width);
    }
    std::cout << "wrote " << args.num << " images and samples.f32 to " << args.out << " (" << m.preset << ", " << m.kind << ", "
              << m.precision << ", " << args.steps << " DDIM steps)\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
