// Integrity: digests, no unlisted files, checked bytes read once, the library run from a private copy.
// Part of edgepack-run (loader.cc includes every part once, in order, into one translation unit).
#ifndef EDGEPACK_NATIVE_INTEGRITY_H_
#define EDGEPACK_NATIVE_INTEGRITY_H_

namespace {

// ---------------------------------------------------------------- integrity

std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chunk(1 << 16);
  edgepack::Sha256 hash;
  while (in) {
    in.read(chunk.data(), chunk.size());
    hash.Update(chunk.data(), in.gcount());
  }
  return hash.HexDigest();
}

void CheckFiles(const std::string& bundle, const Manifest& m) {
  const std::string fix =
      "copy the whole bundle again, or rebuild it; files inside a bundle must not change";
  for (const FileEntry& file : m.files) {
    if (file.path.empty() || file.path[0] == '/' ||
        ("/" + file.path + "/").find("/../") != std::string::npos) {
      BadManifest("file path '" + file.path + "' leaves the bundle");
    }
    std::string path = bundle + "/" + file.path;
    struct stat info;
    if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
      Fail(kExitIntegrity, "bundle file '" + file.path + "' is missing", fix);
    }
    if (info.st_size != file.size) {
      Fail(kExitIntegrity,
           "bundle file '" + file.path + "' has " + std::to_string(info.st_size) +
               " bytes, manifest.json says " + std::to_string(file.size),
           fix);
    }
    if (FileSha256(path) != file.sha256) {
      Fail(kExitIntegrity,
           "bundle file '" + file.path + "' does not match its SHA-256 in manifest.json", fix);
    }
  }
}

// ---------------------------------------------------------------- nothing unlisted, exactly the checked bytes

// Refuses a bundle holding a file or link that manifest.json does not list.
void CheckNoExtraFiles(const std::string& bundle, const Manifest& m) {
  std::vector<std::string> pending = {""};
  while (!pending.empty()) {
    std::string rel_dir = pending.back();
    pending.pop_back();
    DIR* dir = opendir((bundle + "/" + rel_dir).c_str());
    if (dir == nullptr) continue;
    std::vector<std::string> names;
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    for (const std::string& name : names) {
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      struct stat info;
      if (lstat((bundle + "/" + rel).c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
        pending.push_back(rel);
        continue;
      }
      bool listed = rel == "manifest.json" || rel == kSignatureFile ||
                    std::any_of(m.files.begin(), m.files.end(),
                                [&](const FileEntry& f) { return f.path == rel; });
      if (!listed) {
        Fail(kExitIntegrity, "bundle holds '" + rel + "', which manifest.json does not list",
             "remove it, or copy the bundle again from its source");
      }
    }
  }
}

const FileEntry& ListedFile(const Manifest& m, const std::string& rel) {
  for (const FileEntry& f : m.files) {
    if (f.path == rel) return f;
  }
  BadManifest("'" + rel + "' is used but not listed in 'files'");
}

[[noreturn]] void ChangedAfterCheck(const std::string& rel) {
  Fail(kExitIntegrity, "bundle file '" + rel + "' changed after it was checked",
       "something is modifying the bundle; copy it again");
}

// A bundle file's bytes, read once and checked against its manifest entry.
std::string ReadChecked(const std::string& bundle, const Manifest& m, const std::string& rel) {
  const FileEntry& entry = ListedFile(m, rel);
  std::string data = ReadFile(bundle + "/" + rel);
  if (int64_t(data.size()) != entry.size || HexSha256(data) != entry.sha256) ChangedAfterCheck(rel);
  return data;
}

// A fresh 0700 directory under $TMPDIR (default /tmp), which must allow mapping code.
std::string PrivateDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgepack-load-XXXXXX";
  std::vector<char> dir_buffer(dir_template.begin(), dir_template.end());
  dir_buffer.push_back('\0');
  if (mkdtemp(dir_buffer.data()) == nullptr) {
    Fail(kExitUser, "cannot create a private directory under " + dir_template.substr(0, dir_template.rfind('/')),
         "set TMPDIR to a writable directory that allows executables");
  }
  return dir_buffer.data();
}

// Copies bundle file `rel` into the private directory `dir`, hashing while copying; refuses a copy
// that differs from its manifest entry (a file swapped after the digest check). Returns the copy.
std::string CopyChecked(const std::string& bundle, const Manifest& m, const std::string& rel,
                        const std::string& dir) {
  const FileEntry& entry = ListedFile(m, rel);
  std::string copy = dir + "/" + rel.substr(rel.rfind('/') + 1);
  std::ifstream in(bundle + "/" + rel, std::ios::binary);
  std::ofstream out(copy, std::ios::binary | std::ios::trunc);
  std::vector<char> chunk(1 << 16);
  edgepack::Sha256 hash;
  int64_t size = 0;
  while (in) {
    in.read(chunk.data(), chunk.size());
    hash.Update(chunk.data(), in.gcount());
    out.write(chunk.data(), in.gcount());
    size += in.gcount();
  }
  out.close();
  if (!out) {
    unlink(copy.c_str());
    Fail(kExitUser, "cannot copy '" + rel + "' to " + dir + " for loading",
         "set TMPDIR to a writable directory with free space");
  }
  if (size != entry.size || hash.HexDigest() != entry.sha256) {
    unlink(copy.c_str());
    ChangedAfterCheck(rel);
  }
  return copy;
}

// Removes a private directory and the copies in it (mappings stay valid after the files are gone).
void RemovePrivateDir(const std::string& dir) {
  if (DIR* handle = opendir(dir.c_str())) {
    while (dirent* entry = readdir(handle)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") unlink((dir + "/" + name).c_str());
    }
    closedir(handle);
  }
  rmdir(dir.c_str());
}

// Loads the model library from a private copy, so a file swapped after the digest check cannot run.
ffi::Module LoadLibraryCopy(const std::string& bundle, const Manifest& m) {
  std::string dir = PrivateDir();
  try {
    ffi::Module module = ffi::Module::LoadFromFile(CopyChecked(bundle, m, m.library, dir));
    RemovePrivateDir(dir);
    return module;
  } catch (...) {
    RemovePrivateDir(dir);
    throw;
  }
}

}  // namespace

#endif  // EDGEPACK_NATIVE_INTEGRITY_H_
