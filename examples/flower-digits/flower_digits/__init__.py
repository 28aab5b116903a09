"""A standard Flower app on scikit-learn's digits, aggregated by secagg or by Flower."""
