#!/bin/sh
# Seeds fuzz/corpus/dsl (git-ignored) from specs/*.cnn and fuzz/seeds/dsl/*.
set -e
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/dsl
cp specs/*.cnn fuzz/corpus/dsl/
cp fuzz/seeds/dsl/* fuzz/corpus/dsl/
