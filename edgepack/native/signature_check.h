// Signatures (docs/security.md): the keyring and the DSSE envelope over manifest.json.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_SIGNATURE_CHECK_H_
#define EDGEPACK_NATIVE_SIGNATURE_CHECK_H_

namespace {

// ---------------------------------------------------------------- signatures (docs/security.md)
// With a keyring (--keyring or $EDGEPACK_KEYRING: a PEM .pub file or a directory of them, never
// taken from the bundle), manifest.sig.json must carry an ed25519 signature by a trusted key over
// the exact bytes of manifest.json (a DSSE envelope), checked before the manifest is parsed. The
// ed25519 check is OpenSSL 3's, reached with dlopen from the device's own libcrypto.so.3 at a
// system path (never one inside the bundle), so nothing is linked or hand-written here.

#if defined(__aarch64__)
constexpr const char* kMultiarch = "aarch64";
#else
constexpr const char* kMultiarch = "x86_64";
#endif

std::string g_keyring;  // set by Main() from --keyring or $EDGEPACK_KEYRING; empty: no signature check

const char kPayloadType[] = "application/vnd.edgepack.manifest+json";
const char kSignatureFile[] = "manifest.sig.json";
constexpr size_t kMaxManifestBytes = size_t(16) << 20;

// Strict base64 (standard alphabet, '=' padding only at the end); whitespace is skipped when asked.
bool Base64Decode(const std::string& text, std::string* out, bool skip_space) {
  out->clear();
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (char c : text) {
    if (skip_space && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) continue;
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') { ++pad; continue; }
    else return false;
    if (pad) return false;  // data after padding
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(char((acc >> bits) & 0xff));
    }
  }
  return pad <= 2 && (bits / 2 == pad || (bits == 0 && pad == 0));
}

std::string HexSha256(const std::string& data) {
  edgepack::Sha256 hash;
  hash.Update(data.data(), data.size());
  return hash.HexDigest();
}

// DSSE pre-authentication encoding: "DSSEv1 <len> <type> <len> <payload>".
std::string Pae(const std::string& type, const std::string& payload) {
  return "DSSEv1 " + std::to_string(type.size()) + " " + type + " " + std::to_string(payload.size()) +
         " " + payload;
}

// {keyid (SHA-256 of the raw key, hex), raw 32-byte ed25519 key} from PEM PUBLIC KEY blocks.
std::vector<std::pair<std::string, std::string>> ParsePublicKeys(const std::string& text,
                                                                 const std::string& where) {
  static const char kBegin[] = "-----BEGIN PUBLIC KEY-----", kEnd[] = "-----END PUBLIC KEY-----";
  static const unsigned char kPrefix[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                            0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
  std::vector<std::pair<std::string, std::string>> keys;
  for (size_t at = text.find(kBegin); at != std::string::npos; at = text.find(kBegin, at)) {
    at += sizeof(kBegin) - 1;
    size_t end = text.find(kEnd, at);
    std::string der;
    if (end == std::string::npos || !Base64Decode(text.substr(at, end - at), &der, true) ||
        der.size() != 44 || std::memcmp(der.data(), kPrefix, 12) != 0) {
      Fail(kExitUser, "keyring file '" + where + "' holds a public key that is not ed25519",
           "put only keys made by `edgepack keygen` (NAME.pub) in the keyring");
    }
    keys.push_back({HexSha256(der.substr(12)), der.substr(12)});
  }
  return keys;
}

std::vector<std::pair<std::string, std::string>> LoadKeyring(const std::string& path) {
  struct stat info;
  std::vector<std::string> sources;
  if (stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
    if (DIR* dir = opendir(path.c_str())) {
      while (dirent* entry = readdir(dir)) {
        std::string name = entry->d_name;
        if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".pub") == 0) {
          sources.push_back(path + "/" + name);
        }
      }
      closedir(dir);
    }
    std::sort(sources.begin(), sources.end());
  } else if (stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode)) {
    sources.push_back(path);
  } else {
    Fail(kExitUser, "keyring '" + path + "' does not exist",
         "pass --keyring with a .pub file or a directory of .pub files made by `edgepack keygen`");
  }
  std::vector<std::pair<std::string, std::string>> keys;
  for (const std::string& source : sources) {  // each must be a readable regular file (a directory x.pub is refused)
    std::ifstream in(source, std::ios::binary);
    struct stat entry;
    if (stat(source.c_str(), &entry) != 0 || !S_ISREG(entry.st_mode) || !in) {
      Fail(kExitUser, "cannot read keyring file '" + source + "' (not a readable file)", "check its permissions");
    }
    for (auto& key : ParsePublicKeys(ReadFile(source), source)) keys.push_back(key);
  }
  if (keys.empty()) {
    Fail(kExitUser, "keyring '" + path + "' holds no ed25519 public keys",
         "add a .pub file made by `edgepack keygen`");
  }
  return keys;
}

// OpenSSL 3's ed25519 verification through dlopen: declared here, no headers needed.
bool Ed25519Verify(const std::string& key, const std::string& sig, const std::string& message) {
  using NewRawPublicKey = void* (*)(int, void*, const unsigned char*, size_t);
  using MdCtxNew = void* (*)();
  using DigestVerifyInit = int (*)(void*, void**, const void*, void*, void*);
  using DigestVerify = int (*)(void*, const unsigned char*, size_t, const unsigned char*, size_t);
  using Free = void (*)(void*);
  constexpr int kEvpPkeyEd25519 = 1087;  // NID_ED25519
  static void* handle = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("EDGEPACK_LIBCRYPTO"); env && *env) candidates.push_back(env);
    const std::string arch_dirs[] = {"/usr/lib/" + std::string(kMultiarch) + "-linux-gnu",
                                     "/lib/" + std::string(kMultiarch) + "-linux-gnu", "/usr/lib64",
                                     "/lib64", "/usr/lib", "/lib", "/usr/local/lib"};
    for (const std::string& dir : arch_dirs) candidates.push_back(dir + "/libcrypto.so.3");
    for (const std::string& candidate : candidates) {
      if (access(candidate.c_str(), R_OK) != 0) continue;
      if (void* h = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    }
    return static_cast<void*>(nullptr);
  }();
  const std::string fix =
      "install OpenSSL 3 on the device (Debian/Ubuntu: apt-get install libssl3), or set "
      "EDGEPACK_LIBCRYPTO to its libcrypto.so.3";
  if (handle == nullptr) {
    Fail(kExitUser, "a keyring is configured but libcrypto.so.3 (OpenSSL 3) was not found", fix);
  }
  auto new_key = reinterpret_cast<NewRawPublicKey>(dlsym(handle, "EVP_PKEY_new_raw_public_key"));
  auto ctx_new = reinterpret_cast<MdCtxNew>(dlsym(handle, "EVP_MD_CTX_new"));
  auto verify_init = reinterpret_cast<DigestVerifyInit>(dlsym(handle, "EVP_DigestVerifyInit"));
  auto verify = reinterpret_cast<DigestVerify>(dlsym(handle, "EVP_DigestVerify"));
  auto ctx_free = reinterpret_cast<Free>(dlsym(handle, "EVP_MD_CTX_free"));
  auto key_free = reinterpret_cast<Free>(dlsym(handle, "EVP_PKEY_free"));
  if (!new_key || !ctx_new || !verify_init || !verify || !ctx_free || !key_free) {
    Fail(kExitUser, "the device's libcrypto.so.3 lacks the EVP ed25519 functions", fix);
  }
  void* pkey = new_key(kEvpPkeyEd25519, nullptr,
                       reinterpret_cast<const unsigned char*>(key.data()), key.size());
  void* ctx = ctx_new();
  bool ok = pkey && ctx && verify_init(ctx, nullptr, nullptr, nullptr, pkey) == 1 &&
            verify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                   reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
  if (ctx) ctx_free(ctx);
  if (pkey) key_free(pkey);
  return ok;
}

std::string ReadLimited(const std::string& path) {
  struct stat info;
  if (stat(path.c_str(), &info) == 0 && size_t(info.st_size) > kMaxManifestBytes) {
    Fail(kExitIntegrity, "'" + path + "' is larger than 16 MiB", "rebuild the bundle");
  }
  return ReadFile(path);
}

// The bytes of manifest.json; with a keyring, only after its signature checked out.
std::string ManifestText(const std::string& bundle, const std::string& path) {
  if (g_keyring.empty()) return ReadLimited(path);
  auto keys = LoadKeyring(g_keyring);
  const std::string envelope_path = bundle + "/" + kSignatureFile;
  const std::string resign = "sign it again with `edgepack sign BUNDLE KEY`";
  if (access(envelope_path.c_str(), R_OK) != 0) {
    Fail(kExitIntegrity,
         "bundle '" + bundle + "' is not signed (" + kSignatureFile +
             " is missing) and this device only accepts signed bundles",
         "sign it with `edgepack sign BUNDLE KEY` using a key in the device's keyring");
  }
  auto bad = [&](const std::string& what) {
    Fail(kExitIntegrity, std::string(kSignatureFile) + ": " + what, resign);
  };
  std::string envelope_text = ReadLimited(envelope_path);
  if (std::string problem = StrictJson(envelope_text).Problem(); !problem.empty()) bad(problem);
  ffi::String parse_error;
  json::Value envelope = json::Parse(envelope_text, &parse_error);
  if (!parse_error.empty()) bad("not valid JSON");
  std::optional<json::Object> object = envelope.try_cast<json::Object>();
  if (!object) bad("not a JSON object");
  auto text_field = [&](const json::Object& o, const char* key) {
    std::optional<json::Value> value = o.Get(ffi::String(key));
    std::optional<std::string> text = value ? value->try_cast<std::string>() : std::nullopt;
    if (!text) bad(std::string("needs a '") + key + "' string");
    return *text;
  };
  if (text_field(*object, "payloadType") != kPayloadType) {
    bad(std::string("payloadType is not '") + kPayloadType + "'");
  }
  std::string payload;
  if (!Base64Decode(text_field(*object, "payload"), &payload, false)) bad("payload is not base64");
  std::optional<json::Value> signatures_value = object->Get(ffi::String("signatures"));
  std::optional<json::Array> signatures =
      signatures_value ? signatures_value->try_cast<json::Array>() : std::nullopt;
  if (!signatures || signatures->empty()) bad("needs a non-empty 'signatures' list");
  const std::string message = Pae(kPayloadType, payload);
  bool trusted = false, verified = false;
  for (const ffi::Any& item : *signatures) {
    std::optional<json::Object> entry = item.try_cast<json::Object>();
    if (!entry) bad("a signature is not an object");
    std::string keyid = text_field(*entry, "keyid"), sig;
    if (!Base64Decode(text_field(*entry, "sig"), &sig, false)) bad("a signature is not base64");
    for (const auto& [id, key] : keys) {
      if (id != keyid) continue;
      trusted = true;
      verified = verified || Ed25519Verify(key, sig, message);
    }
  }
  if (!trusted) {
    Fail(kExitIntegrity, "bundle '" + bundle + "' is signed only by keys this device does not trust",
         "sign it with a key whose .pub is in the device's keyring");
  }
  if (!verified) {
    Fail(kExitIntegrity, "the signature of bundle '" + bundle + "' does not verify",
         "the manifest or its signature was modified; copy the bundle again or " + resign);
  }
  if (ReadLimited(path) != payload) {
    Fail(kExitIntegrity, "'" + path + "' is not the manifest that was signed",
         "copy the bundle again, or " + resign);
  }
  return payload;
}

}  // namespace

#endif  // EDGEPACK_NATIVE_SIGNATURE_CHECK_H_
