// Encoding by stb_image_write (Debian's libstb, or the copy in third_party/).
#include "image_encode.h"

#include <stb_image_write.h>

#include <algorithm>
#include <cctype>
#include <vector>

namespace hooks {

std::string encode_image(const tloop::ImageView& im, const std::string& format, int jpeg_quality) {
  const bool jpg = format == "jpg";
  // Rows tightly packed; JPEG gets no alpha channel.
  const int out_channels = jpg ? (im.channels == 1 ? 1 : 3) : im.channels;
  std::vector<unsigned char> buf(static_cast<size_t>(im.width) * im.height * out_channels);
  for (int y = 0; y < im.height; ++y) {
    const uint8_t* row = im.pixels + static_cast<int64_t>(y) * im.row_stride;
    for (int x = 0; x < im.width; ++x) {
      const uint8_t* px = row + x * im.channels;
      unsigned char* out = &buf[(static_cast<size_t>(y) * im.width + x) * out_channels];
      if (out_channels == im.channels) {
        std::copy(px, px + im.channels, out);
      } else if (im.channels == 4) {  // RGBA over white
        const int a = px[3];
        for (int c = 0; c < 3; ++c) out[c] = static_cast<unsigned char>((px[c] * a + 255 * (255 - a) + 127) / 255);
      } else {  // RGB stays RGB
        std::copy(px, px + 3, out);
      }
    }
  }
  std::string bytes;
  auto sink = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  const int ok = jpg ? stbi_write_jpg_to_func(sink, &bytes, im.width, im.height, out_channels, buf.data(), jpeg_quality)
                     : stbi_write_png_to_func(sink, &bytes, im.width, im.height, out_channels, buf.data(),
                                              im.width * out_channels);
  if (!ok || bytes.empty()) throw tloop::Error("cannot encode image '" + im.key + "' as " + format);
  return bytes;
}

bool image_key_path(const std::string& key, std::string& out) {
  out.clear();
  bool changed = false;
  size_t start = 0;
  for (;;) {
    const size_t end = std::min(key.find('/', start), key.size());
    std::string seg = key.substr(start, end - start);
    if (seg.empty() || seg == "." || seg == "..") {
      changed = true;
    } else {
      for (char& c : seg)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '=' || c == '+')) {
          c = '_';
          changed = true;
        }
      out += (out.empty() ? "" : "/") + seg;
    }
    if (end == key.size()) return changed;
    start = end + 1;
  }
}

}  // namespace hooks
