# Container images (Dockerfile.worker, Dockerfile.operator) built with buildah, offline-capable,
# cached in .cache/images. See docs/images.md.

IMAGES_BUILDAH := buildah --root .cache/images/storage --runroot .cache/images/run --storage-driver overlay

.PHONY: images images-test images-list images-clean

images: setup ## build the worker and operator images with buildah (cached in .cache/images; minutes cold)
	PYTHON=$(PY) bash scripts/build-images.sh worker operator

images-test: images ## the image tests (build, non-root, CLI, inference inside, volumes, size)
	$(PY) -m pytest tests/images

images-list: ## the built images and their sizes
	$(IMAGES_BUILDAH) images

images-clean: ## remove the images, their base and the wheels (.cache/images)
	-$(IMAGES_BUILDAH) rm --all
	rm -rf .cache/images
