// A minimal JSON reader for engine manifests: objects, arrays, strings (with \uXXXX for the
// Basic Multilingual Plane), numbers, true/false/null. Throws std::runtime_error with the byte
// offset on malformed input. Enough for sparse-deploy manifests; not a general-purpose library.
#pragma once

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

  Json() = default;
  static Json parse(const std::string& text) {
    size_t pos = 0;
    Json value = parse_value(text, pos);
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
  long long integer() const { return static_cast<long long>(num()); }
  bool boolean() const {
    if (type_ != Type::Bool) throw std::runtime_error("JSON: expected true/false");
    return bool_;
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
    if (s[pos] != '"') fail("expected a string", pos);
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
  static Json parse_value(const std::string& s, size_t& pos) {
    skip_ws(s, pos);
    if (pos >= s.size()) fail("unexpected end", pos);
    Json v;
    char c = s[pos];
    if (c == '{') {
      v.type_ = Type::Object;
      ++pos;
      skip_ws(s, pos);
      if (pos < s.size() && s[pos] == '}') { ++pos; return v; }
      while (true) {
        skip_ws(s, pos);
        std::string key = parse_string(s, pos);
        skip_ws(s, pos);
        if (pos >= s.size() || s[pos] != ':') fail("expected ':'", pos);
        ++pos;
        v.object_[key] = parse_value(s, pos);
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
        v.array_.push_back(parse_value(s, pos));
        skip_ws(s, pos);
        if (pos < s.size() && s[pos] == ',') { ++pos; continue; }
        if (pos < s.size() && s[pos] == ']') { ++pos; return v; }
        fail("expected ',' or ']'", pos);
      }
    }
    if (c == '"') {
      v.type_ = Type::String;
      v.string_ = parse_string(s, pos);
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
    pos += static_cast<size_t>(end - begin);
    return v;
  }
};

}  // namespace sd
