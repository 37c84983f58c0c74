"""ament_python package llm_teacher_common; name, version and licence come from package.xml."""
from xml.etree import ElementTree

from setuptools import find_packages, setup

manifest = ElementTree.parse('package.xml').getroot()
package_name = manifest.findtext('name')

setup(
    name=package_name,
    version=manifest.findtext('version'),
    description=manifest.findtext('description'),
    license=manifest.findtext('license'),
    maintainer=manifest.findtext('maintainer'),
    maintainer_email=manifest.find('maintainer').get('email'),
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    entry_points={
        'console_scripts': [
            'llm_teacher_launch = llm_teacher_common.launch_runner:main',
        ],
    },
)
