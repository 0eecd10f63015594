// PNG / JPEG encoding of logged images, shared by the image-writing hooks.
#pragma once

#include <tloop/sdk.hpp>

#include <string>

namespace hooks {

/// The encoded file bytes of `image` as "png" (channels kept) or "jpg" (alpha
/// flattened onto white). Throws tloop::Error when encoding fails.
std::string encode_image(const tloop::ImageView& image, const std::string& format, int jpeg_quality = 95);

}  // namespace hooks
