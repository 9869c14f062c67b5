// Minimum-weight full bipartite matching (the assignment problem), as ProAssist
// scores a dialogue: every row (a predicted turn) is matched to a distinct
// column (a reference turn or a silent frame). Torch-free; Eigen only.
#pragma once

#include <Eigen/Core>

#include <vector>

namespace prospect {

// cost [rows, cols], rows <= cols; +inf marks a forbidden pair. Returns the
// column of each row. Throws std::invalid_argument if no full matching exists.
std::vector<int64_t> min_weight_full_matching(const Eigen::MatrixXd& cost);

}  // namespace prospect
