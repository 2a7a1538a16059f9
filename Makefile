# The two commands a new user or CI types: `make run` and `make test`.
.PHONY: setup setup-test run test compose-test lint bench up env

setup:
	./scripts/setup.sh

setup-test: setup
	./scripts/setup-test-deps.sh

run: setup
	uv run --frozen ccproxy serve

up: setup
	uv run --frozen ccproxy up

# .env for `docker compose up`: fresh secrets and your user id (refuses to replace an existing one).
env: setup
	uv run --frozen ccproxy init-env

# The suite, then the container test (compose.yaml in real containers; needs root for podman).
test: setup-test
	uv run --frozen pytest
	./scripts/compose-test.sh

# compose.yaml in real containers (podman + podman-compose; images built from the Dockerfile).
compose-test: setup-test
	./scripts/compose-test.sh

lint: setup
	uv run --frozen ruff check libs services apps tests bench
	uv run --frozen mypy libs services apps

bench: setup-test
	uv run --frozen python -m bench
