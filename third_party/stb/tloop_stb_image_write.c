/* tloop's own file, not upstream's: the one translation unit that compiles
   stb_image_write's implementation when the vendored copy is used (Debian's
   libstb provides it otherwise). See cmake/TloopDependencies.cmake. */
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "stb_image_write.h"
