// Union-find over dense integer ids where a merge always attaches a root under a new id.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hassod {

class UnionFind {
 public:
  // Makes ids 0 .. size-1, each its own root; keeps the allocation across resets.
  void reset(std::int64_t size) {
    parent_.resize(static_cast<std::size_t>(size));
    for (std::size_t i = 0; i < parent_.size(); ++i) parent_[i] = static_cast<std::int32_t>(i);
  }
  void attach(std::int32_t child, std::int32_t root) { parent_[static_cast<std::size_t>(child)] = root; }
  std::int32_t find(std::int32_t x) {
    std::int32_t root = x;
    while (parent_[static_cast<std::size_t>(root)] != root) root = parent_[static_cast<std::size_t>(root)];
    while (parent_[static_cast<std::size_t>(x)] != root) {  // path compression
      const std::int32_t next = parent_[static_cast<std::size_t>(x)];
      parent_[static_cast<std::size_t>(x)] = root;
      x = next;
    }
    return root;
  }
  std::int64_t size() const { return static_cast<std::int64_t>(parent_.size()); }

 private:
  std::vector<std::int32_t> parent_;
};

// Writes canonical labels of cells 0 .. num_cells-1 into `labels`: the roots numbered 0, 1, ...
// in order of their first cell. Returns the number of distinct roots.
inline std::int32_t canonical_labels(UnionFind& forest, std::int64_t num_cells, std::int32_t* labels) {
  std::vector<std::int32_t> label_of_root(static_cast<std::size_t>(forest.size()), -1);
  std::int32_t next_label = 0;
  for (std::int64_t cell = 0; cell < num_cells; ++cell) {
    const std::int32_t root = forest.find(static_cast<std::int32_t>(cell));
    std::int32_t& label = label_of_root[static_cast<std::size_t>(root)];
    if (label < 0) label = next_label++;
    labels[cell] = label;
  }
  return next_label;
}

}  // namespace hassod
