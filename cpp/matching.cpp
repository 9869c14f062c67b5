#include "matching.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace prospect {

namespace {

// What a forbidden (+inf) pair costs: more than any full matching of allowed pairs. Throws for NaN or -inf.
double forbidden_cost(const Eigen::MatrixXd& cost) {
    double finite_max = 0;
    for (int64_t i = 0; i < cost.rows(); ++i)
        for (int64_t j = 0; j < cost.cols(); ++j) {
            const double c = cost(i, j);
            if (std::isnan(c) || c == -std::numeric_limits<double>::infinity())
                throw std::invalid_argument("min_weight_full_matching: cost expected finite values or +inf");
            if (std::isfinite(c)) finite_max = std::max(finite_max, std::fabs(c));
        }
    return (finite_max + 1.0) * static_cast<double>(cost.rows() + 1) * 4.0;
}

// row_of (1-based, column 0 the virtual start) -> the column of each row; throws if a row got a forbidden pair.
std::vector<int64_t> columns_of_rows(const std::vector<int64_t>& row_of, const Eigen::MatrixXd& cost) {
    const int64_t n = cost.rows(), m = cost.cols();
    std::vector<int64_t> col_of(n, -1);
    for (int64_t j = 1; j <= m; ++j) {
        if (row_of[j] != 0) col_of[row_of[j] - 1] = j - 1;
    }
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(cost(i, col_of[i]))) {
            throw std::invalid_argument("min_weight_full_matching: no full matching exists (row " + std::to_string(i) +
                                        " can only take forbidden or already-taken columns)");
        }
    }
    return col_of;
}

}  // namespace

// Shortest augmenting paths with row and column potentials (Hungarian method),
// O(rows^2 * cols). Forbidden pairs cost BIG, so an assignment that needs one
// shows up as a total at least BIG.
std::vector<int64_t> min_weight_full_matching(const Eigen::MatrixXd& cost) {
    const int64_t n = cost.rows(), m = cost.cols();
    if (n > m) {
        throw std::invalid_argument("min_weight_full_matching: cost expected rows <= cols, got " + std::to_string(n) +
                                    " x " + std::to_string(m));
    }
    if (n == 0) return {};
    const double BIG = forbidden_cost(cost);
    auto c = [&](int64_t i, int64_t j) { return std::isfinite(cost(i, j)) ? cost(i, j) : BIG; };

    const double INF = std::numeric_limits<double>::infinity();
    // 1-based: row_of[j] is the row matched to column j; column 0 is the virtual start.
    std::vector<double> u(n + 1, 0), v(m + 1, 0);
    std::vector<int64_t> row_of(m + 1, 0), way(m + 1, 0);
    for (int64_t i = 1; i <= n; ++i) {
        row_of[0] = i;
        int64_t j0 = 0;
        std::vector<double> minv(m + 1, INF);
        std::vector<char> used(m + 1, 0);
        do {
            used[j0] = 1;
            const int64_t i0 = row_of[j0];
            double delta = INF;
            int64_t j1 = 0;
            for (int64_t j = 1; j <= m; ++j) {
                if (used[j]) continue;
                const double cur = c(i0 - 1, j - 1) - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for (int64_t j = 0; j <= m; ++j) {
                if (used[j]) {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
        } while (row_of[j0] != 0);
        do {
            const int64_t j1 = way[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
        } while (j0 != 0);
    }
    return columns_of_rows(row_of, cost);
}

}  // namespace prospect
