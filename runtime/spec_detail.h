// Helpers the spec's parts share: where a value came from, key paths,
// how a value is described in messages, TOML literals. Private to runtime/.
#pragma once

#include <tloop/plugin.h>
#include <toml++/toml.h>

#include <string>

namespace tloop {

/// "file:line:column", or the --set argument a value came from.
std::string where(const toml::source_region& r, const std::string& file);
/// "parent.key", or "key" at the top.
std::string child_path(const std::string& parent, const std::string& key);
/// A value as error messages show it ("an integer (3)", "a table", ...).
std::string describe(const toml::node& n);
/// Parses a TOML literal (a default, an override value) into {v = literal}.
toml::table parse_literal(const std::string& literal, const std::string& source);
/// Whether a value has option type `t` ("an integer", ...: type_word).
bool type_ok(const toml::node& n, tloop_value_type t);
const char* type_word(tloop_value_type t);

}  // namespace tloop
