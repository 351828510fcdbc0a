// A minimal JSON reader for engine manifests: objects, arrays, strings (with \uXXXX for the
// Basic Multilingual Plane), numbers, true/false/null. Throws std::runtime_error with the byte
// offset on malformed input, or on nesting deeper than kMaxDepth (no stack overflow on hostile
// files). Enough for sparse-deploy manifests; not a general-purpose library.
//
// Each number and string keeps its raw token, so canonical() re-emits a file written by Python's
// json.dumps (ensure_ascii) exactly as json.dumps(value, sort_keys=True, separators=(",", ":"))
// would: the bytes a manifest's seal (manifest_sha256) hashes.
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static constexpr int kMaxDepth = 64;  // manifests nest about 6 deep

  Json() = default;
  static Json parse(const std::string& text) {
    size_t pos = 0;
    Json value = parse_value(text, pos, 0);
    skip_ws(text, pos);
    if (pos != text.size()) fail("trailing characters", pos);
    return value;
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_string() const { return type_ == Type::String; }
  bool is_number() const { return type_ == Type::Number; }

  bool contains(const std::string& key) const { return type_ == Type::Object && object_.count(key) > 0; }
  const Json& operator[](const std::string& key) const {
    if (type_ != Type::Object) throw std::runtime_error("JSON: '" + key + "' looked up in a non-object");
    auto it = object_.find(key);
    if (it == object_.end()) throw std::runtime_error("JSON: missing key '" + key + "'");
    return it->second;
  }
  const Json& operator[](size_t i) const {
    if (type_ != Type::Array || i >= array_.size()) throw std::runtime_error("JSON: array index out of range");
    return array_[i];
  }
  size_t size() const { return type_ == Type::Array ? array_.size() : object_.size(); }
  const std::vector<Json>& items() const { return array_; }

  const std::string& str() const {
    if (type_ != Type::String) throw std::runtime_error("JSON: expected a string");
    return string_;
  }
  double num() const {
    if (type_ != Type::Number) throw std::runtime_error("JSON: expected a number");
    return number_;
  }
  long long integer() const {
    const double v = num();
    if (!(v >= -9.0e15 && v <= 9.0e15) || v != std::floor(v)) throw std::runtime_error("JSON: expected a whole number, got " + raw_);
    return static_cast<long long>(v);
  }
  bool boolean() const {
    if (type_ != Type::Bool) throw std::runtime_error("JSON: expected true/false");
    return bool_;
  }
  // Compact JSON with keys sorted, from the raw tokens (Python's json.dumps(sort_keys=True,
  // separators=(",", ":")) of what Python wrote); `skip` names a top-level key left out.
  std::string canonical(const std::string& skip = "") const {
    std::string out;
    dump(out, skip);
    return out;
  }

  // A string member or `fallback` when the key is absent or null.
  std::string get_string(const std::string& key, const std::string& fallback = "") const {
    return contains(key) && !(*this)[key].is_null() ? (*this)[key].str() : fallback;
  }

 private:
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  std::map<std::string, std::string> raw_keys_;  // decoded key -> its raw token (quotes included)
  std::string raw_;                               // a number's or string's raw token

  void dump(std::string& out, const std::string& skip) const {
    switch (type_) {
      case Type::Null: out += "null"; break;
      case Type::Bool: out += bool_ ? "true" : "false"; break;
      case Type::Number:
      case Type::String: out += raw_; break;
      case Type::Array: {
        out += '[';
        for (size_t i = 0; i < array_.size(); ++i) {
          if (i) out += ',';
          array_[i].dump(out, "");
        }
        out += ']';
        break;
      }
      case Type::Object: {  // std::map orders keys bytewise on UTF-8: Python's code-point order
        out += '{';
        bool first = true;
        for (const auto& kv : object_) {
          if (!skip.empty() && kv.first == skip) continue;
          if (!first) out += ',';
          first = false;
          out += raw_keys_.at(kv.first);
          out += ':';
          kv.second.dump(out, "");
        }
        out += '}';
        break;
      }
    }
  }

  [[noreturn]] static void fail(const std::string& what, size_t pos) {
    throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(pos));
  }
  static void skip_ws(const std::string& s, size_t& pos) {
    while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) ++pos;
  }
  static void expect(const std::string& s, size_t& pos, const char* word) {
    for (const char* c = word; *c; ++c, ++pos)
      if (pos >= s.size() || s[pos] != *c) fail(std::string("expected '") + word + "'", pos);
  }
  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }
  static std::string parse_string(const std::string& s, size_t& pos) {
    if (pos >= s.size() || s[pos] != '"') fail("expected a string", pos);
    ++pos;
    std::string out;
    while (true) {
      if (pos >= s.size()) fail("unterminated string", pos);
      char c = s[pos++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos >= s.size()) fail("unterminated escape", pos);
      char e = s[pos++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos + 4 > s.size()) fail("short \\u escape", pos);
          append_utf8(out, static_cast<unsigned>(std::strtoul(s.substr(pos, 4).c_str(), nullptr, 16)));
          pos += 4;
          break;
        }
        default: fail("bad escape", pos - 1);
      }
    }
  }
  static Json parse_value(const std::string& s, size_t& pos, int depth) {
    skip_ws(s, pos);
    if (pos >= s.size()) fail("unexpected end", pos);
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels", pos);
    Json v;
    char c = s[pos];
    if (c == '{') {
      v.type_ = Type::Object;
      ++pos;
      skip_ws(s, pos);
      if (pos < s.size() && s[pos] == '}') { ++pos; return v; }
      while (true) {
        skip_ws(s, pos);
        if (pos >= s.size()) fail("unexpected end", pos);
        const size_t key_start = pos;
        std::string key = parse_string(s, pos);
        v.raw_keys_[key] = s.substr(key_start, pos - key_start);
        skip_ws(s, pos);
        if (pos >= s.size() || s[pos] != ':') fail("expected ':'", pos);
        ++pos;
        v.object_[key] = parse_value(s, pos, depth + 1);
        skip_ws(s, pos);
        if (pos < s.size() && s[pos] == ',') { ++pos; continue; }
        if (pos < s.size() && s[pos] == '}') { ++pos; return v; }
        fail("expected ',' or '}'", pos);
      }
    }
    if (c == '[') {
      v.type_ = Type::Array;
      ++pos;
      skip_ws(s, pos);
      if (pos < s.size() && s[pos] == ']') { ++pos; return v; }
      while (true) {
        v.array_.push_back(parse_value(s, pos, depth + 1));
        skip_ws(s, pos);
        if (pos < s.size() && s[pos] == ',') { ++pos; continue; }
        if (pos < s.size() && s[pos] == ']') { ++pos; return v; }
        fail("expected ',' or ']'", pos);
      }
    }
    if (c == '"') {
      v.type_ = Type::String;
      const size_t start = pos;
      v.string_ = parse_string(s, pos);
      v.raw_ = s.substr(start, pos - start);
      return v;
    }
    if (c == 't') { expect(s, pos, "true"); v.type_ = Type::Bool; v.bool_ = true; return v; }
    if (c == 'f') { expect(s, pos, "false"); v.type_ = Type::Bool; v.bool_ = false; return v; }
    if (c == 'n') { expect(s, pos, "null"); return v; }
    const char* begin = s.c_str() + pos;
    char* end = nullptr;
    v.number_ = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character", pos);
    v.type_ = Type::Number;
    v.raw_ = s.substr(pos, static_cast<size_t>(end - begin));
    pos += static_cast<size_t>(end - begin);
    return v;
  }
};

}  // namespace sd
