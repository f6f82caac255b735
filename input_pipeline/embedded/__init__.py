"""Real image datasets that ship inside pip packages, as TFDS builders.

They let the main job run offline on a fresh machine: the demo pretrains on
`bit_animals_upstream` and transfers to `bit_farm_animals`, whose images upstream never saw
(see `animal_silhouettes`). Images are stored as 1-channel PNGs; the `decode` op turns them
into 3 channels.

| name                    | train | test  | classes | image   | source package   |
|-------------------------|-------|-------|---------|---------|------------------|
| bit_animal_silhouettes  | 9,000 | 1,000 | 10      | 28x28x1 | animal-mnist 0.4 |
| bit_animals_upstream    | 7,500 | 1,000 | 10      | 28x28x1 | animal-mnist 0.4 |
| bit_farm_animals        | 1,500 |   500 | 5       | 28x28x1 | animal-mnist 0.4 |
| bit_wild_animals        | 4,500 |   500 | 5       | 28x28x1 | animal-mnist 0.4 |
| bit_digits              | 1,297 |   500 | 10      | 8x8x1   | scikit-learn     |

Importing this module registers every name with TFDS.
"""
from input_pipeline.embedded.animal_silhouettes import BitAnimalSilhouettes
from input_pipeline.embedded.animal_silhouettes import BitAnimalsUpstream
from input_pipeline.embedded.animal_silhouettes import BitFarmAnimals
from input_pipeline.embedded.animal_silhouettes import BitWildAnimals
from input_pipeline.embedded.digits import BitDigits

BUILDERS = {"bit_animal_silhouettes": BitAnimalSilhouettes,
            "bit_animals_upstream": BitAnimalsUpstream,
            "bit_wild_animals": BitWildAnimals,
            "bit_farm_animals": BitFarmAnimals,
            "bit_digits": BitDigits}
