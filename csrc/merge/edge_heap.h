// Indexed 4-ary max-heap of edges: every live edge has one entry whose position is tracked, so
// edges can be removed or re-keyed in O(log n) and the heap never holds stale entries (it stays
// small enough for the L2 cache). Four children per node halve the depth that the frequent
// sift-downs from the root (after a bound is resolved) walk through.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hassod {

struct EdgeKey {
  std::int64_t similarity;  // quantized cosine; an upper bound when `bound`
  std::int32_t lo;          // region ids, lo < hi
  std::int32_t hi;
  std::int32_t edge;
  bool bound;
};

// Priority: higher similarity first; ties go to the smaller (lo, hi) pair.
inline bool higher_priority(const EdgeKey& x, const EdgeKey& y) {
  if (x.similarity != y.similarity) return x.similarity > y.similarity;
  if (x.lo != y.lo) return x.lo < y.lo;
  return x.hi < y.hi;
}

class EdgeHeap {
 public:
  void clear() {
    entries_.clear();
    position_.clear();
  }
  bool empty() const { return entries_.empty(); }
  const EdgeKey& top() const { return entries_.front(); }
  bool contains(std::int32_t edge) const {
    return static_cast<std::size_t>(edge) < position_.size() && position_[static_cast<std::size_t>(edge)] >= 0;
  }

  void push(const EdgeKey& key) {
    if (position_.size() <= static_cast<std::size_t>(key.edge))
      position_.resize(static_cast<std::size_t>(key.edge) + 1, -1);
    entries_.push_back(key);
    place(entries_.size() - 1, key);
    sift_up(entries_.size() - 1);
  }

  void remove(std::int32_t edge) {
    const auto index = static_cast<std::size_t>(position_[static_cast<std::size_t>(edge)]);
    position_[static_cast<std::size_t>(edge)] = -1;
    const EdgeKey last = entries_.back();
    entries_.pop_back();
    if (index < entries_.size()) {
      place(index, last);
      restore(index);
    }
  }

  const EdgeKey& key_of(std::int32_t edge) const {
    return entries_[static_cast<std::size_t>(position_[static_cast<std::size_t>(edge)])];
  }

  // Flags an entry as an upper bound without moving it.
  void mark_bound(std::int32_t edge) {
    entries_[static_cast<std::size_t>(position_[static_cast<std::size_t>(edge)])].bound = true;
  }

  // Replaces the key of an edge that is in the heap.
  void update(const EdgeKey& key) {
    const auto index = static_cast<std::size_t>(position_[static_cast<std::size_t>(key.edge)]);
    place(index, key);
    restore(index);
  }

 private:
  void place(std::size_t index, const EdgeKey& key) {
    entries_[index] = key;
    position_[static_cast<std::size_t>(key.edge)] = static_cast<std::int32_t>(index);
  }
  void restore(std::size_t index) {
    if (index > 0 && higher_priority(entries_[index], entries_[(index - 1) / kArity]))
      sift_up(index);
    else
      sift_down(index);
  }
  void sift_up(std::size_t index) {
    const EdgeKey key = entries_[index];
    while (index > 0) {
      const std::size_t parent = (index - 1) / kArity;
      if (!higher_priority(key, entries_[parent])) break;
      place(index, entries_[parent]);
      index = parent;
    }
    place(index, key);
  }
  void sift_down(std::size_t index) {
    const EdgeKey key = entries_[index];
    const std::size_t size = entries_.size();
    for (;;) {
      const std::size_t first = kArity * index + 1;
      if (first >= size) break;
      const std::size_t last = first + kArity < size ? first + kArity : size;
      std::size_t child = first;
      for (std::size_t other = first + 1; other < last; ++other)
        if (higher_priority(entries_[other], entries_[child])) child = other;
      if (!higher_priority(entries_[child], key)) break;
      place(index, entries_[child]);
      index = child;
    }
    place(index, key);
  }

  static constexpr std::size_t kArity = 4;
  std::vector<EdgeKey> entries_;
  std::vector<std::int32_t> position_;  // per edge id; -1 when not in the heap
};

}  // namespace hassod
