// PNG / JPEG encoding of logged images, and file paths for their keys, shared
// by the image-writing hooks.
#pragma once

#include <tloop/sdk.hpp>

#include <string>

namespace hooks {

/// The encoded file bytes of `image` as "png" (channels kept) or "jpg" (alpha
/// flattened onto white). Throws tloop::Error when encoding fails.
std::string encode_image(const tloop::ImageView& image, const std::string& format, int jpeg_quality = 95);

/// A relative path made of safe segments for an image key ("samples/0" stays
/// "samples/0"), or "" when nothing safe is left, so that no image lands
/// outside its directory. Returns whether anything had to change: a leading
/// '/', empty, "." and ".." segments are dropped; characters other than
/// [A-Za-z0-9_.=+-] become '_'.
bool image_key_path(const std::string& key, std::string& out);

}  // namespace hooks
