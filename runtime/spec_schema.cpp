// The generic part of the spec: validating a TOML table against a schema
// (types, bounds, choices, unknown keys with a suggestion), filling defaults.
// Used for the core sections and for every plugin's options alike.
#include "spec.h"
#include "spec_detail.h"

#include "text.h"

#include <algorithm>
#include <cmath>

namespace tloop {

std::string where(const toml::source_region& r, const std::string& file) {
  std::string path = r.path ? *r.path : file;
  if (path.rfind("--set ", 0) == 0) return path;
  if (r.begin.line == 0) return path;
  return str(path, ":", r.begin.line, ":", r.begin.column);
}

std::string child_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string describe(const toml::node& n) {
  std::ostringstream os;
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: os << "a string (\"" << n.as_string()->get() << "\")"; break;
    case toml::node_type::integer: os << "an integer (" << n.as_integer()->get() << ")"; break;
    case toml::node_type::floating_point: os << "a number (" << n.as_floating_point()->get() << ")"; break;
    case toml::node_type::boolean: os << "a boolean (" << (n.as_boolean()->get() ? "true" : "false") << ")"; break;
    default: os << "a " << n.type(); break;
  }
  return os.str();
}

toml::table parse_literal(const std::string& literal, const std::string& source) {
  return toml::parse("v = " + literal, source);
}

const char* type_word(tloop_value_type t) {
  switch (t) {
    case TLOOP_TYPE_BOOL: return "a boolean";
    case TLOOP_TYPE_INT: return "an integer";
    case TLOOP_TYPE_DOUBLE: return "a number";
    case TLOOP_TYPE_STRING: return "a string";
    case TLOOP_TYPE_STRING_LIST: return "a list of strings";
    case TLOOP_TYPE_INT_LIST: return "a list of integers";
    case TLOOP_TYPE_INT_OR_STRING: return "an integer or a string";
  }
  return "a value";
}

bool type_ok(const toml::node& n, tloop_value_type t) {
  switch (t) {
    case TLOOP_TYPE_BOOL: return n.is_boolean();
    case TLOOP_TYPE_INT: return n.is_integer();
    case TLOOP_TYPE_DOUBLE: return n.is_number();
    case TLOOP_TYPE_STRING: return n.is_string();
    case TLOOP_TYPE_STRING_LIST: {
      const toml::array* a = n.as_array();
      return a && std::all_of(a->begin(), a->end(), [](const toml::node& e) { return e.is_string(); });
    }
    case TLOOP_TYPE_INT_LIST: {
      const toml::array* a = n.as_array();
      return a && std::all_of(a->begin(), a->end(), [](const toml::node& e) { return e.is_integer(); });
    }
    case TLOOP_TYPE_INT_OR_STRING: return n.is_integer() || n.is_string();
  }
  return false;
}

namespace {

std::string number_text(double v) { return str(v); }

}  // namespace

void validate_table(toml::table& table, const Schema& schema, const std::string& key_path,
                    std::vector<std::string>& problems, const std::vector<std::string>& extra_keys) {
  const std::string file = table.source().path ? *table.source().path : "";
  std::vector<std::string> known = extra_keys;
  for (const auto& o : schema) known.push_back(o.name);

  for (auto&& [key, node] : table) {
    const std::string k(key.str());
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    std::string msg = where(key.source(), file) + ": " + child_path(key_path, k) + ": unknown key";
    const std::string suggestion = closest_match(k, known);
    if (!suggestion.empty())
      msg += "; did you mean '" + suggestion + "'?";
    else
      msg += " (known keys: " + join(known, ", ") + ")";
    problems.push_back(msg);
  }

  for (const auto& o : schema) {
    const std::string path = child_path(key_path, o.name);
    toml::node* node = table.get(o.name);
    if (node == nullptr) {
      if (!o.default_literal) {
        problems.push_back(where(table.source(), file) + ": " + path + ": missing required key (" +
                           type_word(o.type) + ": " + o.doc + ")");
      } else if (!o.default_literal->empty()) {
        try {
          toml::table holder = parse_literal(*o.default_literal, "default of " + path);
          table.insert(o.name, *holder.get("v"));
        } catch (const toml::parse_error& e) {
          problems.push_back(path + ": the plugin's default '" + *o.default_literal + "' is not valid TOML");
        }
      }
      continue;
    }
    const std::string at = where(node->source(), file) + ": " + path + ": ";
    if (!type_ok(*node, o.type)) {
      problems.push_back(at + "expected " + type_word(o.type) + ", got " + describe(*node));
      continue;
    }
    // Strings cross the C ABI as NUL-terminated: a NUL would cut them short unseen.
    const auto has_nul = [](const toml::node& n) { return n.is_string() && n.as_string()->get().find('\0') != std::string::npos; };
    bool nul = has_nul(*node);
    if (const toml::array* list = node->as_array())
      for (const toml::node& e : *list) nul = nul || has_nul(e);
    if (nul) {
      problems.push_back(at + "contains a NUL character (\\u0000)");
      continue;
    }
    if (o.type == TLOOP_TYPE_INT || o.type == TLOOP_TYPE_DOUBLE ||
        (o.type == TLOOP_TYPE_INT_OR_STRING && node->is_integer())) {
      const double v = node->is_integer() ? static_cast<double>(node->as_integer()->get())
                                          : node->as_floating_point()->get();
      if (!std::isfinite(v)) {  // TOML's inf and nan: no option means anything by them
        problems.push_back(at + "must be a finite number, got " + describe(*node));
        continue;
      }
      if ((o.min && v < *o.min) || (o.max && v > *o.max)) {
        std::string range = o.min && o.max ? "between " + number_text(*o.min) + " and " + number_text(*o.max)
                            : o.min      ? "at least " + number_text(*o.min)
                            : o.max      ? "at most " + number_text(*o.max)
                                         : "a number";
        problems.push_back(at + "must be " + range + ", got " + describe(*node));
        continue;
      }
      if (o.type == TLOOP_TYPE_DOUBLE && node->is_integer()) {
        table.insert_or_assign(o.name, v);  // readers see one type; `node` is gone now
        continue;
      }
    }
    if (o.choices.empty()) continue;
    // A string, or each string of a list, is one of the choices.
    const auto check_choice = [&](const toml::node& n, const std::string& where_text) {
      const std::string v = n.as_string()->get();
      if (std::find(o.choices.begin(), o.choices.end(), v) != o.choices.end()) return;
      std::string msg = where_text + "must be one of " + join(o.choices, ", ") + ", got \"" + v + "\"";
      const std::string suggestion = closest_match(v, o.choices);
      if (!suggestion.empty()) msg += "; did you mean '" + suggestion + "'?";
      problems.push_back(msg);
    };
    if (node->is_string()) check_choice(*node, at);
    if (const toml::array* list = node->as_array())
      for (size_t i = 0; i < list->size(); ++i)
        if ((*list)[i].is_string())
          check_choice((*list)[i], where((*list)[i].source(), file) + ": " + path + "[" + std::to_string(i) + "]: ");
  }
}

}  // namespace tloop
