// Written by hand over <elf.h>: no library checks an ELF file's layout
// against its size without mapping it (which is what must not happen), and
// the checks are a few bounds on the ELF header, program and section headers.
#include "elf_check.h"

#include "text.h"

#include <elf.h>

#include <cstring>
#include <fstream>
#include <vector>

namespace tloop {
namespace {

// This process's own ELF header: the class, byte order and machine a
// library must have to load here.
const Elf64_Ehdr& own_header() {
  static const Elf64_Ehdr header = [] {
    Elf64_Ehdr h{};
    std::ifstream self("/proc/self/exe", std::ios::binary);
    self.read(reinterpret_cast<char*>(&h), sizeof(h));
    return h;
  }();
  return header;
}

bool read_at(std::ifstream& in, uint64_t offset, void* out, size_t n) {
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
  return static_cast<size_t>(in.gcount()) == n;
}

std::string damaged(const std::string& what, uint64_t end, uint64_t size) {
  return str("a damaged or truncated ELF file: ", what, " end at byte ", end, ", but the file has ", size,
             " bytes (copy or build it again)");
}

}  // namespace

std::optional<std::string> elf_problem(const std::filesystem::path& file) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(file, ec);
  if (ec) return "cannot read it: " + ec.message();
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::string("cannot open it");
  Elf64_Ehdr h{};
  if (size < EI_NIDENT || !read_at(in, 0, h.e_ident, EI_NIDENT) || std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0)
    return std::string("not an ELF file (no ELF magic number)");
  const Elf64_Ehdr& own = own_header();
  if (h.e_ident[EI_CLASS] != own.e_ident[EI_CLASS])
    return str("an ELF file of another class (", h.e_ident[EI_CLASS] == ELFCLASS32 ? "32" : "64",
               "-bit) than this tloop");
  if (h.e_ident[EI_DATA] != own.e_ident[EI_DATA]) return std::string("an ELF file of another byte order");
  if (size < sizeof(Elf64_Ehdr) || !read_at(in, 0, &h, sizeof(h)))
    return damaged("its ELF header would", sizeof(Elf64_Ehdr), size);
  if (h.e_machine != own.e_machine)
    return str("an ELF file for another machine (e_machine ", h.e_machine, ", this one is ", own.e_machine, ")");
  if (h.e_type != ET_DYN) return std::string("an ELF file that is not a shared library (build it with -shared)");
  if (h.e_phnum == 0 || h.e_phentsize != sizeof(Elf64_Phdr))
    return std::string("a damaged ELF file: no valid program header table");
  const uint64_t ph_end = h.e_phoff + uint64_t{h.e_phnum} * sizeof(Elf64_Phdr);
  if (h.e_phoff > size || ph_end > size) return damaged("its program headers", ph_end, size);
  if (h.e_shoff != 0) {  // not needed to load, but past the end means the file was cut short
    const uint64_t sh_end = h.e_shoff + uint64_t{h.e_shnum} * h.e_shentsize;
    if (h.e_shoff > size || sh_end > size) return damaged("its section headers", sh_end, size);
  }
  std::vector<Elf64_Phdr> segments(h.e_phnum);
  if (!read_at(in, h.e_phoff, segments.data(), segments.size() * sizeof(Elf64_Phdr)))
    return damaged("its program headers", ph_end, size);
  for (size_t i = 0; i < segments.size(); ++i) {
    const Elf64_Phdr& p = segments[i];
    if (p.p_type != PT_LOAD && p.p_type != PT_DYNAMIC) continue;
    const uint64_t end = p.p_offset + p.p_filesz;
    if (end < p.p_offset || end > size) return damaged(str("segment ", i, " would"), end, size);
  }
  return std::nullopt;
}

}  // namespace tloop
