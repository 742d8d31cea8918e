// Request bodies of `edgepack-run serve` read as strict JSON (RFC 8259, UTF-8, as Python's json.loads
// reads them for runtime/edgepack_serve.py) into a compact tree: 16 bytes per value, numbers parsed
// with std::from_chars. Refused with 400 before any tensor is made: nesting deeper than kMaxJsonDepth,
// a run of more than kMaxIntDigits digits, NaN/Infinity and other bare words.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_REQUEST_JSON_H_
#define EDGEPACK_NATIVE_REQUEST_JSON_H_

#include <charconv>

namespace {

// kMaxJsonDepth (64) comes from manifest_json.h: one nesting limit for every JSON edgepack-run reads.
constexpr size_t kMaxIntDigits = 40;

// A request the server refuses: the HTTP status and `problem; fix`.
struct HttpError {
  int code;
  std::string problem, fix;
};

[[noreturn]] void Refuse(int code, std::string problem, std::string fix) {
  throw HttpError{code, std::move(problem), std::move(fix)};
}

// One JSON value. Arrays and objects keep their children in the document's pool from `first` on:
// `size` items, or `size` members as key (a string) then value.
struct JsonNode {
  enum Kind : uint8_t { kNull, kBool, kInt, kFloat, kString, kArray, kObject };
  Kind kind = kNull;
  uint32_t size = 0;
  union {
    bool boolean;
    int64_t integer;
    double real;
    uint64_t first;  // kArray, kObject: the first child in the pool; kString: the index of its text
  };
  JsonNode() : integer(0) {}
};

class JsonDocument {
 public:
  // Parses `text` or refuses it (400, one line).
  explicit JsonDocument(const std::string& text) : s_(text) {
    if (!ValidUtf8(text)) Refuse(400, "the request body is not JSON (not valid UTF-8)", kFix);
    Space();
    Value(1);
    Space();
    if (i_ != s_.size()) Syntax("extra data");
    root_ = stack_.back();
    stack_.clear();
    stack_.shrink_to_fit();
  }

  const JsonNode& root() const { return root_; }
  // The children of an array (size of them) or of an object (2 * size: key, value, ...).
  const JsonNode* Children(const JsonNode& node) const { return pool_.data() + node.first; }
  const std::string& Text(const JsonNode& string) const { return strings_[string.first]; }

  // The value of `key` in `object` (the last of duplicate keys, as Python's json), or nullptr;
  // nullptr also when `object` is null or not an object.
  const JsonNode* Get(const JsonNode* object, const char* key) const {
    if (object == nullptr || object->kind != JsonNode::kObject) return nullptr;
    const JsonNode* members = Children(*object);
    for (size_t m = object->size; m-- > 0;) {
      if (Text(members[2 * m]) == key) return &members[2 * m + 1];
    }
    return nullptr;
  }
  // The text of `node` when it is a string, else nullptr.
  const std::string* StringOf(const JsonNode* node) const {
    return node != nullptr && node->kind == JsonNode::kString ? &Text(*node) : nullptr;
  }

 private:
  static constexpr const char* kFix = "send a JSON object with \"inputs\"";

  [[noreturn]] void Syntax(const char* what) const {
    Refuse(400, "the request body is not JSON (" + std::string(what) + " at byte " + std::to_string(i_) + ")", kFix);
  }
  [[noreturn]] void Word() const {  // a bare word such as NaN or Infinity where a value belongs
    size_t end = i_;
    while (end < s_.size() && std::isalpha(static_cast<unsigned char>(s_[end]))) ++end;
    Refuse(400, "the request body is not JSON (it holds " + s_.substr(i_, std::min<size_t>(end - i_, 16)) + ")",
           "send finite numbers in strict JSON (non-finite inputs as base64 .npy)");
  }
  void Space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool At(char c) const { return i_ < s_.size() && s_[i_] == c; }
  bool AtDigit() const { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; }
  void Digits() {
    size_t start = i_;
    while (AtDigit()) ++i_;
    if (i_ == start) Syntax("expecting a digit");
    if (i_ - start > kMaxIntDigits) {
      Refuse(400, "the request holds a number of more than " + std::to_string(kMaxIntDigits) + " digits",
             "send integers of at most " + std::to_string(kMaxIntDigits) + " digits");
    }
  }

  void Push(const JsonNode& node) { stack_.push_back(node); }

  void Number() {
    size_t start = i_;
    bool integral = true;
    if (At('-')) ++i_;
    if (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) Word();
    if (At('0')) {
      ++i_;
    } else {
      Digits();
    }
    if (At('.')) {
      ++i_;
      Digits();
      integral = false;
    }
    if (At('e') || At('E')) {
      ++i_;
      if (At('+') || At('-')) ++i_;
      Digits();
      integral = false;
    }
    const char *first = s_.data() + start, *last = s_.data() + i_;
    JsonNode node;
    if (integral) {
      std::from_chars_result r = std::from_chars(first, last, node.integer);
      if (r.ec == std::errc()) {
        node.kind = JsonNode::kInt;
        return Push(node);
      }
    }
    node.kind = JsonNode::kFloat;
    std::from_chars_result r = std::from_chars(first, last, node.real);
    if (r.ec == std::errc::result_out_of_range) {  // as Python's float(): +-inf on overflow, 0 or subnormal on underflow
      node.real = std::strtod(std::string(first, last).c_str(), nullptr);
    }
    Push(node);
  }

  void Hex4(uint32_t* cp) {
    if (i_ + 4 > s_.size()) Syntax("invalid \\u escape");
    *cp = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      int v = HexValue(c);
      if (v < 0) Syntax("invalid \\u escape");
      *cp = (*cp << 4) | uint32_t(v);
    }
  }
  // A string starting at '"', unescaped into strings_.
  void String() {
    size_t start = ++i_;
    while (i_ < s_.size() && s_[i_] != '"' && s_[i_] != '\\' && static_cast<unsigned char>(s_[i_]) >= 0x20) ++i_;
    std::string text = s_.substr(start, i_ - start);
    while (true) {
      if (i_ >= s_.size()) Syntax("unterminated string");
      unsigned char c = s_[i_];
      if (c == '"') break;
      if (c < 0x20) Syntax("control character in a string");
      ++i_;
      if (c != '\\') {
        text.push_back(char(c));
        continue;
      }
      if (i_ >= s_.size()) Syntax("unterminated string");
      char e = s_[i_++];
      const char* simple = e != 0 ? std::strchr("\"\\/bfnrt", e) : nullptr;
      if (simple != nullptr) {
        text.push_back("\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
        continue;
      }
      if (e != 'u') Syntax("invalid escape");
      uint32_t cp;
      Hex4(&cp);
      if (cp >= 0xD800 && cp <= 0xDBFF && s_.compare(i_, 2, "\\u") == 0) {
        size_t mark = i_;
        i_ += 2;
        uint32_t low;
        Hex4(&low);
        if (low >= 0xDC00 && low <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        else i_ = mark;
      }
      AppendUtf8(cp, &text);
    }
    ++i_;
    JsonNode node;
    node.kind = JsonNode::kString;
    node.first = strings_.size();
    strings_.push_back(std::move(text));
    Push(node);
  }

  void Literal(const char* word, JsonNode::Kind kind, bool value) {
    size_t len = std::strlen(word);
    if (s_.compare(i_, len, word) != 0) Word();
    i_ += len;
    JsonNode node;
    node.kind = kind;
    node.boolean = value;
    Push(node);
  }

  // One value at `depth` (the top level is 1), pushed onto stack_.
  void Value(int depth) {
    if (i_ >= s_.size()) Syntax("expecting a value");
    char c = s_[i_];
    if (c == '{' || c == '[') {
      if (depth > kMaxJsonDepth) {
        Refuse(400, "the request JSON is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels",
               "send tensors as nested lists of their rank");
      }
      bool object = c == '{';
      char close = object ? '}' : ']';
      size_t base = stack_.size();
      uint32_t count = 0;
      ++i_;
      Space();
      if (At(close)) {
        ++i_;
      } else {
        while (true) {
          if (object) {
            if (!At('"')) Syntax("expecting a property name in double quotes");
            String();
            Space();
            if (!At(':')) Syntax("expecting ':'");
            ++i_;
            Space();
          }
          Value(depth + 1);
          if (++count == 0) Syntax("more than 2^32 values in one list");
          Space();
          if (At(',')) {
            ++i_;
            Space();
            continue;
          }
          if (At(close)) {
            ++i_;
            break;
          }
          Syntax(object ? "expecting ',' or '}'" : "expecting ',' or ']'");
        }
      }
      JsonNode node;
      node.kind = object ? JsonNode::kObject : JsonNode::kArray;
      node.size = count;
      node.first = pool_.size();
      pool_.insert(pool_.end(), stack_.begin() + base, stack_.end());
      stack_.resize(base);
      return Push(node);
    }
    if (c == '"') return String();
    if (c == 't') return Literal("true", JsonNode::kBool, true);
    if (c == 'f') return Literal("false", JsonNode::kBool, false);
    if (c == 'n') return Literal("null", JsonNode::kNull, false);
    if (c == '-' || (c >= '0' && c <= '9')) return Number();
    if (std::isalpha(static_cast<unsigned char>(c))) Word();
    Syntax("expecting a value");
  }

  const std::string& s_;
  size_t i_ = 0;
  std::vector<JsonNode> stack_, pool_;
  std::vector<std::string> strings_;
  JsonNode root_;
};

}  // namespace

#endif  // EDGEPACK_NATIVE_REQUEST_JSON_H_
